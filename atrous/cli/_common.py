"""Argument parsing helpers shared by the subcommands (the checks of parsed values are :mod:`atrous._checks`)."""

from __future__ import annotations

import contextlib
import importlib.util
import math
import sys

from atrous._checks import check_int, finite_numbers


def parse_ints(text: str, name: str, *, maximum: int | None = None) -> list[int]:
    """Parse ``"1,2,4,8"`` into ints >= 1 (and <= ``maximum``), naming ``name`` in the error."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{name} must be comma-separated integers like 1,2,4,8, got {text!r}") from None
    allowed = f">= 1 and <= {maximum:,}" if maximum is not None else ">= 1"
    if not values or min(values) < 1 or (maximum is not None and max(values) > maximum):
        raise ValueError(f"{name} must be comma-separated integers {allowed}, got {text!r}")
    return values


def parse_floats(text: str, name: str, *, maximum: float | None = None) -> tuple[float, ...]:
    """``"0.75,1,1.25"`` -> finite floats > 0 (and <= ``maximum``), naming ``name`` in the error."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"{name} must be comma-separated numbers like 0.75,1,1.25, got {text!r}") from None
    allowed = f"finite numbers > 0 and <= {maximum:g}" if maximum is not None else "finite numbers > 0"
    # nan compares False with everything, so finiteness is checked on its own
    if not finite_numbers(values, above=0) or (maximum is not None and max(values) > maximum):
        raise ValueError(f"{name} must be comma-separated {allowed}, got {text!r}")
    return values


def parse_key_values(items: list[str] | None, name: str) -> dict:
    """``["width=16", "variant=large"]`` -> ``{"width": 16, "variant": "large"}`` (ints, floats, bools kept)."""
    import ast

    result = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"{name} must look like KEY=VALUE, got {item!r}")
        if key in result:
            raise ValueError(f"{name} {key} is given twice ({key}={result[key]!r} and {item!r}); give it once")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):  # not a literal: a string
            value = raw
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name} {item!r}: {key} must be a finite number, got {raw!r}")
        result[key] = value
    return result


def require(module: str, extra: str, purpose: str) -> None:
    """Raise an ImportError naming the extra to install when the optional ``module`` is missing."""
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"{purpose} needs the {module!r} package: pip install 'atrous[{extra}]'")


def add_device_argument(parser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")


def add_checkpoint_arguments(parser) -> None:
    group = parser.add_argument_group("checkpoints (a save also ends every epoch; SIGINT/SIGTERM save and exit)")
    group.add_argument("--checkpoint-minutes", type=float, default=5.0, metavar="M",
                       help="save at least every M minutes of training (default: 5)")
    group.add_argument("--checkpoint-steps", type=int, default=None, metavar="N",
                       help="also save every N optimizer steps")


def checkpoint_every(args):
    from atrous.engine.loop import CheckpointEvery

    try:
        return CheckpointEvery(minutes=args.checkpoint_minutes, steps=args.checkpoint_steps)
    except ValueError as error:
        raise ValueError(f"--{str(error).replace('checkpoint ', 'checkpoint-', 1)}") from None


def check_resume(args, allowed: set[str]) -> str:
    """The run folder of ``--resume``, after refusing an empty one, another ``--out``, and any option
    outside ``allowed`` (a resumed run trains with its own settings)."""
    if not args.resume.strip():
        raise ValueError("--resume needs the run folder to continue")
    if args.out and args.out != args.resume:
        raise ValueError("--resume RUN_DIR continues that folder; do not also pass a different --out")
    given = [name for name, value in vars(args).items() if name not in allowed and value not in (None, False)]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ValueError(f"{flags}: a resumed run keeps the settings it was started with; give only --resume "
                         f"(and how long to train), or start a new run")
    return args.resume


def add_model_arguments(parser, *, what: str) -> None:
    """``--checkpoint`` or ``--model NAME --weights PATH`` (with ``--num-classes``, ``--model-arg``,
    ``--mean``, ``--std``): where the model to ``what`` comes from."""
    group = parser.add_argument_group(
        "model: give --checkpoint, or --model and --weights for a released checkpoint or a saved state_dict")
    group.add_argument("--checkpoint", default=None, metavar="RUN_OR_CHECKPOINT",
                       help=f"run folder, checkpoint folder or checkpoint file to {what}")
    group.add_argument("--model", default=None, metavar="NAME",
                       help="registered segmentation model the --weights file was saved from, e.g. deeplabv3_resnet50")
    group.add_argument("--weights", default=None, metavar="PATH",
                       help="local weights file (.pth/.pt state_dict or .safetensors) for --model; atrous never "
                            "downloads: docs/inference.md says where released files come from")
    group.add_argument("--num-classes", type=int, default=None, metavar="K",
                       help="classes --model predicts (default: read from the --weights file's classifier)")
    group.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                       help="extra --model builder argument, e.g. head=torchvision; repeat for more")
    group.add_argument("--mean", default=None, metavar="R,G,B",
                       help="input normalisation mean of RGB in [0, 1] for --weights (default: ImageNet's, "
                            "0.485,0.456,0.406, which torchvision's checkpoints expect)")
    group.add_argument("--std", default=None, metavar="R,G,B",
                       help="input normalisation std for --weights (default: ImageNet's, 0.229,0.224,0.225)")


WEIGHTS_ONLY = ("num_classes", "model_arg", "mean", "std")


def check_model_arguments(args) -> None:
    """Exactly one of ``--checkpoint`` and ``--model``/``--weights``; the ``--weights`` options only with them."""
    weights = args.model is not None or args.weights is not None
    if args.checkpoint is not None and weights:
        raise ValueError("give --checkpoint RUN_OR_CHECKPOINT or --model NAME --weights PATH, not both")
    if args.checkpoint is None and not weights:
        raise ValueError("give --checkpoint RUN_OR_CHECKPOINT (a run of `atrous train`) or --model NAME "
                         "--weights PATH (a local weights file)")
    if args.checkpoint is not None:
        given = [name for name in WEIGHTS_ONLY if getattr(args, name) is not None]
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise ValueError(f"{flags}: only with --model and --weights; a checkpoint carries its model, classes "
                             f"and normalisation")
        if not args.checkpoint.strip():
            raise ValueError("--checkpoint needs a run folder, checkpoint folder or checkpoint file")
        return
    if args.model is None:
        raise ValueError("--weights PATH needs --model NAME, the registered model the file was saved from")
    if args.weights is None:
        raise ValueError(f"--model {args.model} needs --weights PATH, a local weights file (atrous never downloads)")
    if args.num_classes is not None:
        from atrous.data.palette import MAX_CLASSES  # imports torch: only when a command runs, never at --help

        check_int(args.num_classes, "--num-classes", low=1, high=MAX_CLASSES)


def parse_stats(text: str | None, name: str) -> list[float] | None:
    """``"0.485,0.456,0.406"`` -> finite floats (any sign; the library checks count and range)."""
    if text is None:
        return None
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{name} must be comma-separated numbers like 0.485,0.456,0.406, got {text!r}") from None
    if not finite_numbers(values):
        raise ValueError(f"{name} must be comma-separated finite numbers, got {text!r}")
    return values


def load_model(args, *, device):
    """``(model, meta)`` from ``--checkpoint`` or ``--model``/``--weights`` (checked by :func:`check_model_arguments`);
    the weights file's load report is printed on stderr as one line."""
    from atrous.engine.predict import load_trained_model, model_from_weights

    if args.checkpoint is not None:
        return load_trained_model(args.checkpoint, device=device)
    model_args = parse_key_values(args.model_arg, "--model-arg")
    model, meta = model_from_weights(args.model, args.weights, num_classes=args.num_classes, model_args=model_args,
                                     mean=parse_stats(args.mean, "--mean"), std=parse_stats(args.std, "--std"),
                                     device=device)
    print(f"atrous: weights: {meta['weights_report']}", file=sys.stderr)
    return model, meta


def add_tile_arguments(parser) -> None:
    group = parser.add_argument_group("tiles (large images run in overlapping tiles; docs/inference.md)")
    group.add_argument("--tile", type=int, default=None, metavar="SIZE",
                       help="images larger than SIZE on either side run in overlapping SIZE x SIZE tiles; 0 never "
                            "tiles (default: atrous.engine.tiling.DEFAULT_TILE, 2048)")
    group.add_argument("--tile-overlap", type=int, default=None, metavar="PX",
                       help="pixels of context around each tile's kept core (default: the model's receptive-field "
                            "reach, which makes tiles equal the whole-image forward)")


def tile_options(args) -> dict:
    """``tile``/``overlap`` keyword arguments of the library, checked (the errors name the flags)."""
    from atrous.engine.tiling import DEFAULT_TILE, check_tile_options

    tile = DEFAULT_TILE if args.tile is None else args.tile
    check_tile_options(tile, args.tile_overlap)
    return {"tile": tile, "overlap": args.tile_overlap}


@contextlib.contextmanager
def one_line_warnings(skip: tuple[type[Warning], ...] = ()):
    """Warnings raised inside print as one line each on stderr (``atrous: warning: ...``), the first of
    each category only (one per tile size would repeat it); categories in ``skip`` are not printed
    (said otherwise, e.g. the weights report)."""
    import warnings

    seen = set()

    def show(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, skip) and category not in seen:
            seen.add(category)
            print(f"atrous: warning: {' '.join(str(message).split())}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield
