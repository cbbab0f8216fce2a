"""Several processes, one training run: the same `tuneloop run` under torchrun or accelerate launch.

    torchrun --nproc_per_node 4 $(which tuneloop) run config.yaml     # or: accelerate launch --num_processes 4 ...
    distributed.init()                         # WORLD_SIZE > 1 in the environment -> join the process group
    model = distributed.wrap(model, cfg.train) # ddp: every rank starts from rank 0's weights; fsdp: shard layers
    distributed.average_gradients(params, cfg.train.distributed)   # after each step's backward passes

In a single process every function here is a no-op, so the recipes call them unconditionally.

Same global batch: `train.batch_size` is the micro-batch of the whole job, not of one process. Every rank builds
the same seeded batch order and takes every world-th example of each micro-batch, so a step sees exactly the
examples a single process would, and the loss is normalized by the step's label tokens summed over all ranks.

Why ddp is a gradient all-reduce after the step rather than the `DistributedDataParallel` wrapper: the recipes'
losses reach into the model's parts (decoder body, then the LM head at label positions only), which would
bypass a wrapper's forward hooks; the sum of per-rank gradients is exact however unevenly the examples split
(a rank may get none), and it costs one all-reduce per optimizer step instead of one per micro-batch. What it
gives up is overlapping communication with the backward pass, which matters little for adapter gradients
(a few MB). fsdp (torch's `fully_shard`, one unit per decoder layer) is for models whose weights, gradients
and optimizer state do not fit one device: its forward must go through the sharded root module, which the
SFT recipe provides (`sft.LabelTokenLoss`).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from tuneloop.config import TrainConfig
from tuneloop.errors import UserError

MODES = ("ddp", "fsdp")


def init() -> None:
    """Join the process group when launched with WORLD_SIZE > 1 (torchrun and accelerate launch set it).

    nccl on CUDA (one GPU per process, chosen by LOCAL_RANK), gloo on CPU. Safe to call twice."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the process that writes logs, checkpoints, the saved model and the progress bar."""
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def close() -> None:
    """Leave the process group (end of the run), so the launcher sees a clean exit."""
    if active():
        dist.destroy_process_group()


def all_reduce_sum(x: float | int) -> float:
    """Sum a number over all ranks (every rank gets the sum)."""
    if not active():
        return x
    t = torch.tensor([float(x)], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return float(t)


def share(items: list) -> list:
    """This process's part of one global micro-batch: every world-th item (possibly none)."""
    return items[rank()::world()]


def gather(items: list) -> list:
    """Concatenate every rank's list (rank order), e.g. per-example metrics for logging."""
    if not active():
        return items
    parts = [None] * world()
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def check_mode(train: TrainConfig, recipe: str = "sft") -> None:
    """Fail before loading anything on a distributed setting that cannot work."""
    if train.distributed not in MODES:
        raise UserError(f"train.distributed: {train.distributed!r} is not one of {', '.join(MODES)}")
    if train.distributed == "fsdp" and world() > 1 and recipe != "sft":
        raise UserError(f"train.distributed: fsdp supports train.recipe sft only (got {recipe}); use ddp")


def wrap(model: torch.nn.Module, train: TrainConfig, root: torch.nn.Module | None = None) -> torch.nn.Module:
    """Prepare `model` (already on its device) for multi-process training; returns what the loss is called on.

    ddp: broadcast rank 0's trainable weights, so every replica starts identical even if an initialisation
    was not seeded alike (frozen weights come from the same files); returns `root or model` unchanged.
    fsdp: `fully_shard` each decoder layer (the classes in transformers' `_no_split_modules`), then the `root`
    module whose forward computes the loss (it owns the embeddings and head). Build the optimizer afterwards:
    sharding replaces the parameters."""
    root = model if root is None else root
    if not active():
        return root
    check_mode(train)
    if train.distributed == "ddp":
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    dist.broadcast(p.data, src=0)
        return root
    from torch.distributed.fsdp import fully_shard

    layer_classes = set(getattr(_base(model), "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in layer_classes]
    if not layers:
        raise UserError(f"train.distributed: fsdp found no decoder layers to shard in {type(_base(model)).__name__}; "
                        "use ddp")
    for layer in layers:
        fully_shard(layer)
    return fully_shard(root)


def average_gradients(params: list, mode: str) -> None:
    """ddp: average the step's gradients over ranks (FSDP's backward already did it, sharded).

    Flat all-reduces over ~64 MB buckets: a call per tensor would cost a round trip for each of hundreds of
    small LoRA tensors. A rank that saw no examples contributes zeros."""
    if not active() or mode == "fsdp":
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    for bucket in _buckets([p.grad for p in params]):
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat)
        flat /= world()
        for g, part in zip(bucket, flat.split([g.numel() for g in bucket])):
            g.copy_(part.view_as(g))


def _buckets(tensors: list, limit: int = 16_000_000):
    """Consecutive groups of same-dtype tensors of at most `limit` elements (or one larger tensor)."""
    bucket, size = [], 0
    for t in tensors:
        if bucket and (t.dtype != bucket[0].dtype or size + t.numel() > limit):
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += t.numel()
    if bucket:
        yield bucket


def sharded(model: torch.nn.Module) -> bool:
    """True when `fully_shard` was applied to (part of) the model."""
    if not active():
        return False
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def unsharded_copy(model: torch.nn.Module) -> torch.nn.Module | None:
    """An FSDP-trained causal LM as one plain fp32 model on rank 0's device (None on the other ranks), to save,
    merge and evaluate.

    Gathers the full state dict (a collective: every rank calls this) on the CPU, then loads it into a fresh
    model of the same config and adapter. Rank 0 briefly holds two CPU copies of the weights."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from transformers import AutoModelForCausalLM

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main():
        return None
    plain = AutoModelForCausalLM.from_config(_base(model).config, dtype=torch.float32)
    if hasattr(model, "peft_config"):
        from peft import get_peft_model

        plain = get_peft_model(plain, model.peft_config["default"])
    plain.load_state_dict(full)
    return plain.to(next(model.parameters()).device)


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
