"""The picture of a digits run in docs/digits.md: validation scenes, their labels and the predictions.

    atrous train                                  # writes runs/context_net_digits
    python benchmarks/digits_figure.py --checkpoint runs/context_net_digits --out docs/digits_predictions.png

Rows are validation scenes (the first ``--scenes``); columns are the image, the ground truth
and the prediction, coloured with the VOC palette (the pale rim is the ignore label).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/context_net_digits", help="run folder or checkpoint")
    parser.add_argument("--out", default="docs/digits_predictions.png")
    parser.add_argument("--scenes", type=int, default=4, help="validation scenes to show")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from atrous.data import DigitsScenes
    from atrous.data.palette import colorize
    from atrous.engine.predict import load_trained_model
    from atrous.engine.preprocess import normalize

    model, meta = load_trained_model(args.checkpoint)
    val = DigitsScenes("val", seed=meta["config"]["seed"], num_images=args.scenes)
    figure, axes = plt.subplots(args.scenes, 3, figsize=(6.6, 2.2 * args.scenes), squeeze=False)
    for row in range(args.scenes):
        image, mask = val[row]
        with torch.no_grad():
            prediction = model(normalize(image[None])).argmax(1)[0]
        panels = (image.permute(1, 2, 0).numpy(), colorize(mask.numpy()), colorize(prediction.numpy()))
        for column, (panel, title) in enumerate(zip(panels, ("image", "ground truth", "prediction"))):
            axes[row, column].imshow(panel)
            axes[row, column].set_axis_off()
            if row == 0:
                axes[row, column].set_title(title)
    figure.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
