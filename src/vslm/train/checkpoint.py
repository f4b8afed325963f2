"""Checkpoints: one safetensors file per step, written atomically, loaded without unpickling.

A checkpoint holds the model's weights under `model/<name>` and the rest of the training state
(optimizer, schedule position, RNG and data-sampler state, callbacks) as a JSON skeleton in the
file's metadata whose tensors are stored under `state/<n>`. Nothing is ever unpickled, so a
checkpoint from anywhere is safe to open.

Writing goes to a temporary file in the same folder, is fsynced, then renamed over the final name
(and the folder fsynced): a crash at any moment leaves either the previous checkpoints alone or
the new one complete. Files whose name does not match `step_NNNNNNNN.safetensors` are ignored: a
resume renames one it passes over as corrupt or non-finite to `step_NNNNNNNN.safetensors.corrupt`.
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from vslm import files
from vslm.errors import VSLMError

NAME = re.compile(r"^step_(\d{8})\.safetensors$")
STATE_KEY = "vslm_state"


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}.safetensors"


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint in folder, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), folder / p.name) for p in folder.iterdir() if (m := NAME.match(p.name))]
    return sorted(found)


# A JSON skeleton of nested state: tensors become {"__tensor__": key}; tuples and dicts whose keys
# are not all strings (the optimizer's per-parameter state) keep their types.


def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"state/{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__items__" in obj:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        return {k: _decode(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    return obj


FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)  # no space, a file-size limit, a quota


def atomic_write(path: Path, write: Callable[[Any], None], size: int | None = None) -> None:
    """vslm.files.atomic_write, with a full disk, a file-size limit or a quota ending in one line (VSLMError)
    that names the folder and, when `size` (bytes) is given, the space needed; the folder is left as it was."""
    try:
        files.atomic_write(path, write)
    except OSError as e:
        if e.errno in FULL:
            raise _no_room(e, path, size) from None
        raise


def _no_room(e: OSError, path: Path, size: int | None) -> VSLMError:
    needed = f"; {size / 2**20:.1f} MB needed" if size else ""
    return VSLMError(f"cannot write {path.name} in {path.parent}: {os.strerror(e.errno or 0)}{needed}; "
                     "nothing was lost: free space, then resume (vslm train --resume --out RUN)")


def save_checkpoint(path: Path, weights: dict[str, torch.Tensor], state: dict | None = None) -> None:
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in weights.items()}
    skeleton = _encode(state or {}, tensors)
    blob = save(tensors, metadata={STATE_KEY: json.dumps(skeleton)})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(blob), size=len(blob))


def checkpoint_step(path: Path) -> int | None:
    """The step a checkpoint or snapshot was saved at, from its header alone (None: its state has none)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            step = json.loads((f.metadata() or {}).get(STATE_KEY, "{}")).get("step")
    except Exception as e:  # OSError, JSON, and safetensors' own error types
        raise VSLMError(f"cannot read checkpoint {path}: {e}") from None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """(weights, state) from a checkpoint file."""
    try:
        tensors = load_file(str(path), device=str(device))
        with safe_open(str(path), framework="pt") as f:
            skeleton = json.loads((f.metadata() or {}).get(STATE_KEY, "{}"))
    except Exception as e:  # OSError, JSON, and safetensors' own error types
        raise VSLMError(f"cannot read checkpoint {path}: {e}") from None
    weights = {k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")}
    return weights, _decode(skeleton, tensors)


def _tensors(obj: Any, path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(path, tensor) for every tensor in nested state, where it lies (no copy)."""
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{path}/{k}")
    elif isinstance(obj, tuple | list):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{path}/{i}")


def nonfinite(weights: dict[str, torch.Tensor], state: dict | None = None) -> list[str]:
    """Names of the floating-point tensors (the weights, then state/... paths) that hold a NaN or an
    infinity: a checkpoint with any is never written, and never resumed from. One reduction on the
    tensors' own device (one host sync); names are looked for only when something is not finite."""
    floats = [(k, v) for k, v in (*weights.items(), *_tensors(state or {}, "state")) if v.is_floating_point()]
    if not floats or bool(torch.stack([torch.isfinite(v).all().to(floats[0][1].device) for _, v in floats]).all()):
        return []
    return [k for k, v in floats if not bool(torch.isfinite(v).all())]


def set_aside(path: Path, why: str) -> Path:
    """Rename path to NAME.<why> (NAME.<why>-2, ... when that is taken), a name list_checkpoints and the
    rotation ignore: out of the way, nothing deleted. Returns the new path."""
    target, n = path.with_name(f"{path.name}.{why}"), 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.{why}-{n}")
    path.rename(target)
    return target


def newest_good(paths: Sequence[Path], device: str | torch.device = "cpu",
                warn: Callable[[str], None] | None = None,
                move_aside: bool = False) -> tuple[Path, dict[str, torch.Tensor], dict]:
    """(path, weights, state) of the newest of `paths` (oldest first) that reads and holds only finite
    values; each newer one passed over is named in a one-line warning, and with `move_aside` (a resume,
    which holds the run's lock) renamed to NAME.corrupt, so that the rotation cannot keep it and
    delete a good one."""
    warn = warn or (lambda line: print(line, file=sys.stderr))
    for path in reversed(paths):
        try:
            weights, state = load_checkpoint(path, device)
            bad = nonfinite(weights, state)
            if not bad:
                return path, weights, state
            problem = f"{path} holds non-finite values ({len(bad)} tensors, {bad[0]} first)"
        except VSLMError as e:
            problem = str(e)
        moved = f"; moved it aside to {set_aside(Path(path), 'corrupt').name}" if move_aside else ""
        warn(f"warning: {problem}{moved}; trying an older one")
    folder = Path(paths[0]).parent if paths else "the run folder"
    raise VSLMError(f"no readable checkpoint with finite weights in {folder}")


def check_fits(path: Path, weights: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    """One line (VSLMError) naming the checkpoint and its first tensor that `model` does not have, lacks,
    or has in another shape, instead of load_state_dict's page of mismatches."""
    own = model.state_dict()
    for name, tensor in own.items():
        if name not in weights:
            raise VSLMError(f"checkpoint {path} does not fit the model: it has no tensor {name}")
        if weights[name].shape != tensor.shape:
            raise VSLMError(f"checkpoint {path} does not fit the model: {name} is {list(weights[name].shape)} "
                            f"there, {list(tensor.shape)} in the model")
    if extra := next((name for name in weights if name not in own), None):
        raise VSLMError(f"checkpoint {path} does not fit the model: the model has no tensor {extra}")


def prune(folder: Path, keep_last: int) -> None:
    """Delete all but the newest keep_last checkpoints in folder."""
    for _, path in list_checkpoints(folder)[:-keep_last]:
        path.unlink(missing_ok=True)
