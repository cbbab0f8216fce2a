"""Atomic training checkpoints and exact resume.

    save_checkpoint(run_dir / "checkpoints", state, position)   # checkpoints/step-000050/
    position = load_checkpoint(latest(run_dir / "checkpoints"), state)

A checkpoint holds what resuming needs to continue as if never interrupted: trainable weights
(safetensors), optimizer and scheduler state, every RNG (python, numpy, torch), the data position (epoch and
batch index; the batch order is a pure function of seed and epoch) and the log so far. It is written into a
temporary folder and renamed into place, so a kill at any moment leaves either the old or the new checkpoint,
never half of one. Only the last K are kept, plus the best by validation loss.

Every process calls save_checkpoint and load_checkpoint: under fsdp the weights and optimizer state are
gathered from the shards (a collective) into full tensors keyed by parameter name, which rank 0 writes, and
each process loads the full files back into its own shards; ddp replicas hold the same state, so rank 0
writes its own. Across machines the run folder must be on a shared filesystem.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tuneloop.train import distributed

PREFIX = "step-"


def trainable_state(model) -> dict:
    return {k: p.detach().contiguous().cpu() for k, p in model.named_parameters() if p.requires_grad}


def _full_state(state) -> tuple[dict, dict]:
    """(trainable weights, optimizer state) as full CPU tensors; gathered from the shards under fsdp."""
    if not distributed.sharded(state.model):
        return trainable_state(state.model), state.optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    opts = _sharded_options()
    weights = get_model_state_dict(state.model, options=opts)
    # ignore_frozen_params still returns a tied frozen head (lm_head = embeddings); keep what trainable_state keeps
    trainable = {k for k, p in state.model.named_parameters() if p.requires_grad}
    return ({k: v.contiguous() for k, v in weights.items() if k in trainable},
            get_optimizer_state_dict(state.model, state.optimizer, options=opts))


def _sharded_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Trainable weights only (as trainable_state), full tensors on the CPU; optimizer state keyed by name.
    return StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True, strict=False)


def save_checkpoint(root: Path, state, position: dict, keep_last: int = 2,
                    val_loss: float | None = None) -> Path | None:
    """Write checkpoints/step-NNNNNN atomically and prune; every process calls it, rank 0 writes (its path)."""
    if not distributed.is_main() and not distributed.sharded(state.model):
        return None  # a ddp replica: rank 0 holds the same state
    weights, optimizer = _full_state(state)
    if not distributed.is_main():
        return None
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{PREFIX}{position['step']:06d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    save_file(weights, tmp / "trainable.safetensors")
    # Optimizer/scheduler states are tensors and plain numbers; they are read back with weights_only=True.
    torch.save({"optimizer": optimizer, "scheduler": state.scheduler.state_dict(),
                "torch_rng": torch.get_rng_state()}, tmp / "optim.pt")
    meta = {"position": position, "val_loss": val_loss, "history": state.history,
            "python_rng": _jsonable(random.getstate()), "numpy_rng": _jsonable(np.random.get_state())}
    (tmp / "state.json").write_text(json.dumps(meta))
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    _prune(root, keep_last)
    return target


def _jsonable(x):
    if isinstance(x, tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return {"ndarray": x.tolist(), "dtype": str(x.dtype)}
    return x


def _unjson(x):
    if isinstance(x, dict) and "ndarray" in x:
        return np.array(x["ndarray"], dtype=x["dtype"])
    if isinstance(x, list):
        return tuple(_unjson(v) for v in x)
    return x


def checkpoints(root: Path) -> list:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / "state.json").is_file())


def latest(root: Path) -> Path | None:
    found = checkpoints(root)
    return found[-1] if found else None


def _prune(root: Path, keep_last: int) -> None:
    found = checkpoints(root)
    losses = {p: json.loads((p / "state.json").read_text()).get("val_loss") for p in found}
    scored = [p for p in found if losses[p] is not None]
    best = min(scored, key=lambda p: losses[p]) if scored else None
    for p in found[:-keep_last] if keep_last > 0 else []:
        if p != best:
            shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(".tmp-*"):  # leftovers of a kill during a save
        shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(path: Path, state) -> dict:
    """Restore weights, optimizer, scheduler, RNGs and log into `state`; returns the data position."""
    weights = load_file(path / "trainable.safetensors")
    optim = torch.load(path / "optim.pt", weights_only=True)
    if distributed.sharded(state.model):  # each process keeps its own shard of the full tensors
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        set_model_state_dict(state.model, weights, options=_sharded_options())
        set_optimizer_state_dict(state.model, state.optimizer, optim["optimizer"], options=_sharded_options())
    else:
        params = dict(state.model.named_parameters())
        with torch.no_grad():
            for k, v in weights.items():
                params[k].copy_(v.to(params[k].device, params[k].dtype))
        state.optimizer.load_state_dict(optim["optimizer"])
    state.scheduler.load_state_dict(optim["scheduler"])
    torch.set_rng_state(optim["torch_rng"])
    meta = json.loads((path / "state.json").read_text())
    random.setstate(_unjson(meta["python_rng"]))
    np.random.set_state(_unjson(meta["numpy_rng"]))
    state.history[:] = meta["history"]
    return meta["position"]
