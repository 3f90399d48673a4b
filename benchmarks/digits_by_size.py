"""Where a digits model fails: accuracy per digit height, missed strokes, train versus val.

For every digit placed in a validation scene, the fraction of its labelled stroke pixels that
the model gives the right class, averaged per height bucket (16 px wide buckets); then the
share of stroke pixels predicted background, and mIoU on as many training scenes, to tell
underfitting from overfitting.

    python benchmarks/digits_by_size.py --checkpoint runs/context_net_digits   # the table in docs/digits.md
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def main() -> None:
    from atrous.data import DigitsScenes
    from atrous.engine.evaluate import evaluate, predict_probabilities
    from atrous.engine.predict import load_trained_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="run folder or checkpoint folder")
    parser.add_argument("--bucket", type=int, default=16, help="height bucket width in pixels")
    args = parser.parse_args()
    model, meta = load_trained_model(args.checkpoint)
    config = meta["config"]  # the run's own scenes: its seed and val size
    val = DigitsScenes("val", num_images=config.get("val_images"), seed=config.get("seed", 0))
    by_height: dict[int, list[float]] = {}
    missed = total = 0
    for index in range(len(val)):
        image, mask = val[index]
        with torch.no_grad():
            probabilities = predict_probabilities(model, image[None], mean=meta["mean"], std=meta["std"])
        prediction = probabilities[0].argmax(0).numpy()
        labels = mask.numpy()
        strokes = (labels > 0) & (labels != 255)
        missed += int((strokes & (prediction == 0)).sum())
        total += int(strokes.sum())
        for digit in val.scene(index).digits:
            box = (slice(digit.top, digit.top + digit.height), slice(digit.left, digit.left + digit.width))
            own = labels[box] == digit.label + 1
            if own.any():
                bucket = digit.height // args.bucket * args.bucket
                by_height.setdefault(bucket, []).append(float((prediction[box][own] == digit.label + 1).mean()))
    print("| digit height (px) | digits | stroke pixels right (mean) | digits mostly right (> 50%) |")
    print("| --- | --- | --- | --- |")
    for bucket in sorted(by_height):
        scores = np.array(by_height[bucket])
        print(f"| {bucket}-{bucket + args.bucket - 1} | {len(scores)} | {scores.mean():.2f} | {(scores > 0.5).mean():.2f} |")
    train = DigitsScenes("train", num_images=len(val), seed=config.get("seed", 0))
    with torch.no_grad():
        val_miou = evaluate(model, val, mean=meta["mean"], std=meta["std"])["miou"]
        train_miou = evaluate(model, train, mean=meta["mean"], std=meta["std"])["miou"]
    print(f"\nstroke pixels predicted background: {missed / max(total, 1):.1%}")
    print(f"mIoU on {len(val)} val scenes {val_miou:.3f}, on the first {len(train)} training scenes {train_miou:.3f}")


if __name__ == "__main__":
    main()
