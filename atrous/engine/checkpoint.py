"""Checkpoints that survive a crash: safetensors weights plus a JSON of everything else.

A checkpoint is a directory holding ``model.safetensors``, optionally ``optimizer.safetensors``
(the optimizer's tensors) and ``checkpoint.json`` (metadata, the optimizer's non-tensor state,
RNG states). Every file is written with :func:`atrous._files.atomic_write` (a temporary name, then
``os.replace``), so no file is ever half written. The JSON records the SHA-256 of each tensor
file and every load checks it, so a flipped byte, a truncated file or a file of another save is
refused with the file's name instead of loaded. (Run folders go further and write each save
into a new folder: :mod:`atrous.engine.run_dir`.)
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from atrous._checks import is_number
from atrous._files import atomic_write

META_FILE = "checkpoint.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"


def _split_optimizer_state(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Separate an optimizer state_dict into flat tensors and a JSON-able remainder."""
    tensors: dict[str, torch.Tensor] = {}
    rest: dict[str, dict] = {}
    for param_id, slots in state["state"].items():
        rest[str(param_id)] = {}
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param_id}.{key}"] = value.detach().cpu().contiguous()
            else:
                rest[str(param_id)][key] = value
    return tensors, {"state": rest, "param_groups": state["param_groups"]}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    state: dict[int, dict] = {int(k): dict(v) for k, v in rest["state"].items()}
    for name, value in tensors.items():
        param_id, key = name.split(".", 1)
        state.setdefault(int(param_id), {})[key] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], rest: Any, source: str) -> None:
    """Load the saved per-parameter state; the hyperparameters stay those ``optimizer`` was built with
    (they come from the run's config), so a crafted ``param_groups`` cannot change them."""
    import copy

    fresh = optimizer.state_dict()
    groups = rest.get("param_groups") if isinstance(rest, dict) else None
    slots = rest.get("state") if isinstance(rest, dict) else None
    if not isinstance(groups, list) or [g.get("params") if isinstance(g, dict) else None for g in groups] != \
            [g["params"] for g in fresh["param_groups"]]:
        raise ValueError(f"{source}: field optimizer.param_groups does not describe this model's parameters")
    if not isinstance(slots, dict) or not all(k.isdigit() and isinstance(v, dict) for k, v in slots.items()):
        raise ValueError(f"{source}: field optimizer.state must map parameter numbers to their state")
    numbers = {p for g in fresh["param_groups"] for p in g["params"]}
    for name in tensors:
        number, _, key = name.partition(".")
        if not number.isdigit() or int(number) not in numbers or not key:
            raise ValueError(f"{source}: the optimizer file holds a tensor {name!r} for no parameter of this model")
    for number, values in slots.items():
        if int(number) not in numbers or not all(is_number(v) for v in values.values()):
            raise ValueError(f"{source}: field optimizer.state.{number} must hold numbers for a parameter of this model")
    state = _join_optimizer_state(tensors, {"state": slots, "param_groups": copy.deepcopy(fresh["param_groups"])})
    try:
        optimizer.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{source}: field optimizer does not fit this model's optimizer ({error})") from None


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as JSON-able values."""
    np_state = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "python": [version, list(internal), gauss_next],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
    return state


def _python_rng(value: Any) -> tuple:
    if isinstance(value, str):  # checkpoints before the JSON form: base64 of repr(random.getstate())
        import ast

        value = ast.literal_eval(base64.b64decode(value, validate=True).decode())
    version, internal, gauss_next = value
    return (version, tuple(internal), gauss_next)


def set_rng_state(state: dict[str, Any], *, source: str = "rng") -> None:
    """Restore what :func:`rng_state` captured.

    Raises:
        ValueError: a state that is not what :func:`rng_state` writes, naming ``source`` and the field.
    """
    parsed = {}
    for name, parse in (
        ("python", _python_rng),
        ("numpy", lambda v: (v[0], np.asarray(v[1], dtype=np.uint32), *v[2:])),
        ("torch", lambda v: torch.frombuffer(bytearray(base64.b64decode(v, validate=True)), dtype=torch.uint8)),
    ):
        try:
            parsed[name] = parse(state[name])
        except Exception:  # any malformed value: the message names the field
            raise ValueError(f"{source}: field rng.{name} is not a saved random-number state") from None
    try:
        random.setstate(parsed["python"])
        np.random.set_state(parsed["numpy"])
        torch.set_rng_state(parsed["torch"])
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{source}: field rng is not a saved random-number state ({error})") from None
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(
            [torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8) for s in state["cuda"]]
        )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def save_checkpoint(
    directory: str | os.PathLike,
    model: nn.Module,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (and ``optimizer``) with ``meta`` into ``directory`` atomically.

    Args:
        directory: created if missing; files in it are replaced one by one, atomically.
        model: its ``state_dict`` goes to ``model.safetensors``.
        optimizer: its state goes to ``optimizer.safetensors`` and the JSON.
        meta: JSON-serialisable metadata (model name and kwargs, epoch, config...).

    Returns:
        The path of ``checkpoint.json``.
    """
    from safetensors.torch import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stamp = {"checkpoint_id": uuid.uuid4().hex}
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    record: dict[str, Any] = {"meta": meta or {}, "rng": rng_state(), "files": {}, **stamp}
    payloads = {MODEL_FILE: save(weights, metadata=stamp)}
    if optimizer is not None:
        tensors, rest = _split_optimizer_state(optimizer.state_dict())
        payloads[OPTIMIZER_FILE] = save(tensors, metadata=stamp)
        record["optimizer"] = rest
    for name, data in payloads.items():
        _write_bytes(directory / name, data)
        record["files"][name] = _sha256(data)
    text = json.dumps(record, indent=1)
    atomic_write(directory / META_FILE, lambda tmp: Path(tmp).write_text(text))
    return directory / META_FILE


def checkpoint_dir(path: str | os.PathLike) -> Path:
    """A checkpoint folder, its ``checkpoint.json``/``model.safetensors``, or a run folder (its newest
    best save, else its newest last one) -> the checkpoint folder."""
    from atrous.engine.run_dir import newest_checkpoint

    path = Path(path)
    if path.is_file() and path.name in (META_FILE, MODEL_FILE):
        path = path.parent
    if path.is_dir() and not (path / META_FILE).is_file():  # a run folder: its best save, else its last
        path = newest_checkpoint(path, "best") or newest_checkpoint(path, "last") or path
    if not (path / META_FILE).is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} has no {META_FILE}; expected a run folder or checkpoint folder")
    return path


def read_checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The full JSON record of a checkpoint (``meta``, ``rng``, ``optimizer``, ``files``)."""
    directory = checkpoint_dir(path)
    file = directory / META_FILE
    try:
        record = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"checkpoint file {str(file)!r} is corrupt: {error}") from None
    expected = {"meta": dict, "rng": dict, "files": (dict, list), "optimizer": dict, "checkpoint_id": str}
    if not isinstance(record, dict):
        raise ValueError(f"checkpoint file {str(file)!r} must hold a JSON object, got {type(record).__name__}")
    for key, kind in expected.items():
        if key in record and not isinstance(record[key], kind):
            raise ValueError(f"checkpoint file {str(file)!r}: field {key!r} has the wrong type ({type(record[key]).__name__})")
    files = record.get("files", {})
    if isinstance(files, dict) and not all(isinstance(v, str) and len(v) == 64 for v in files.values()) or \
            isinstance(files, list) and not all(isinstance(v, str) for v in files):
        raise ValueError(f"checkpoint file {str(file)!r}: field 'files' must map file names to SHA-256 digests")
    return record


def _load_tensors(path: Path, record: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Tensors of one checkpoint file, refusing corrupt files and files of another save."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        data = path.read_bytes()
    except OSError as error:
        raise ValueError(f"checkpoint file {str(path)!r} is unreadable: {error.strerror or error}") from None
    digests = record.get("files")
    if not isinstance(digests, dict) and "checkpoint_id" not in record:
        raise ValueError(f"checkpoint file {str(path)!r} has no SHA-256 digest in {META_FILE} beside it "
                         f"(field 'files') to be checked against")
    if isinstance(digests, dict):  # checkpoints before digests listed the names only (and were stamped)
        if path.name not in digests:
            raise ValueError(f"checkpoint file {str(path)!r} is not listed in {META_FILE} beside it")
        if _sha256(data) != digests[path.name]:
            raise ValueError(
                f"checkpoint file {str(path)!r} is corrupt or was changed: its SHA-256 differs from the one "
                f"recorded in {META_FILE}"
            )
    try:
        stamp = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")]).get("__metadata__", {}).get("checkpoint_id")
        tensors = load(data)
    except (SafetensorError, ValueError, OverflowError, AttributeError) as error:
        raise ValueError(f"checkpoint file {str(path)!r} is corrupt: {error}") from None
    if "checkpoint_id" in record and stamp != record["checkpoint_id"]:
        raise ValueError(
            f"checkpoint file {str(path)!r} belongs to another save than {META_FILE} beside it "
            f"(a save was interrupted); use another checkpoint"
        )
    return tensors


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module | None = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = False,
) -> dict[str, Any]:
    """Read a checkpoint; load weights into ``model`` and state into ``optimizer`` if given.

    Args:
        path: the checkpoint directory, or its ``checkpoint.json`` / ``model.safetensors``.
        model: receives the weights (strict: every key must match).
        optimizer: receives the per-parameter state (moments, step counts); its hyperparameters
            (learning rate, betas, weight decay...) stay those it was built with.
        restore_rng: also restore the Python, NumPy and torch RNG states.

    Returns:
        The ``meta`` dict given to :func:`save_checkpoint`.
    """
    directory = checkpoint_dir(path)
    record = read_checkpoint_meta(directory)
    if model is not None:
        from atrous.models.weights import upgrade_state_dict

        weights = upgrade_state_dict(_load_tensors(directory / MODEL_FILE, record), model)
        try:
            model.load_state_dict(weights)
        except RuntimeError as error:
            first = " ".join(str(error).strip().splitlines()[0:2])
            first = first if len(first) <= 300 else first[:300] + "..."
            raise ValueError(f"checkpoint {str(directory)!r} does not fit the model: {first}") from None
    if optimizer is not None:
        if "optimizer" not in record:
            raise ValueError(f"checkpoint {str(directory)!r} holds no optimizer state")
        tensors = _load_tensors(directory / OPTIMIZER_FILE, record)
        _load_optimizer(optimizer, tensors, record["optimizer"], str(directory / META_FILE))
    if restore_rng:
        set_rng_state(record.get("rng", {}), source=str(directory / META_FILE))
    return record.get("meta", {})
