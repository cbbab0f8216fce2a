"""Two processes (gloo on CPU) train exactly like one process with the same global batch, for ddp and fsdp.

The fast test forks 2 workers that set the variables torchrun sets (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_*)
from a fork server that imported this module once: a fresh process importing torch + transformers + peft
costs ~15 s on 2 shared cores, a fork nothing. The slow test runs the real launcher on this file as a script:
    torchrun --nproc_per_node 2 tests/unit/test_distributed.py MODEL_DIR OUT_DIR ddp fsdp
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tuneloop.config import AdapterConfig, TrainConfig
from tuneloop.data.formats import Example
from tuneloop.errors import UserError
from tuneloop.train import classify, distributed, dpo, sft

pytestmark = pytest.mark.usefixtures("one_thread")
# Workers pick the GPU of their LOCAL_RANK where CUDA exists: 2 processes need 2 GPUs (or none, as in CI).
needs_two_devices = pytest.mark.skipif(torch.cuda.device_count() == 1, reason="2 workers, 1 GPU")


def _rows(n: int) -> list:
    # Uneven lengths; 9 rows in batches of 4 -> micro-batches of 4, 4 and 1, so one rank gets no example once.
    return [Example([{"role": "user", "content": "is seat " + "x " * (3 * i + 1) + "free?"},
                     {"role": "assistant", "content": "yes " * (1 + i % 4)}], None) for i in range(n)]


def _train(model_dir: str, out: Path, mode: str, precision: str = "fp32") -> None:
    """What every process runs: the real setup -> fit -> save."""
    out.mkdir(exist_ok=True)
    train = TrainConfig(max_steps=3, batch_size=4, grad_accum=1, lr=5e-3, warmup_ratio=0.0, log_every=1,
                        precision=precision, threads=1, distributed=mode)
    state = sft.setup(model_dir, _rows(9), _rows(3), AdapterConfig(method="lora", r=4, alpha=8), train, seed=0)
    sft.fit(state, train, log_path=out / "train_log.jsonl" if distributed.is_main() else None)
    sft.save(state, out)
    (out / f"rank{distributed.rank()}.json").write_text(json.dumps({"world": distributed.world()}))


def _train_classify(model_dir: str, out: Path) -> None:
    """The classification recipe under ddp: a decoder head on the same uneven rows, labels by parity."""
    out.mkdir(exist_ok=True)
    train = TrainConfig(max_steps=3, batch_size=4, lr=5e-3, warmup_ratio=0.0, log_every=1, precision="fp32",
                        threads=1, distributed="ddp")
    rows = [Example(r.messages, ["no", "yes"][i % 2]) for i, r in enumerate(_rows(9))]
    state = classify.setup(model_dir, rows, rows[:3], ["no", "yes"], AdapterConfig(method="lora", r=4, alpha=8),
                           train, seed=0)
    classify.fit(state, train, log_path=out / "train_log.jsonl" if distributed.is_main() else None)
    classify.save(state, out)


def _train_dpo(model_dir: str, out: Path) -> None:
    """The DPO recipe under ddp: uneven pairs (prompt + chosen / rejected answers of different lengths)."""
    out.mkdir(exist_ok=True)
    train = TrainConfig(max_steps=3, batch_size=4, lr=5e-3, warmup_ratio=0.0, log_every=1, precision="fp32",
                        threads=1, distributed="ddp")
    pairs = [{"prompt": r.messages[:1], "chosen": "yes " * (1 + i % 3), "rejected": "no"} for i, r in enumerate(_rows(9))]
    state = dpo.setup(model_dir, pairs, pairs[:3], AdapterConfig(method="lora", r=4, alpha=8), train, seed=0)
    dpo.fit(state, train, log_path=out / "train_log.jsonl" if distributed.is_main() else None)
    dpo.save(state, out)


def _train_resumed(model_dir: str, out: Path) -> None:
    """fsdp stopped after step 1 (its checkpoint gathered from the shards and written), then a fresh setup
    resumed from that checkpoint to step 3 (out/resumed), and the uninterrupted run (out/straight). A constant
    schedule: the stopped run's 1-step schedule would otherwise leave a different learning rate in the
    optimizer state than the 3-step one."""
    runs = {"straight": [(3, False)], "resumed": [(1, False), (3, True)]}
    for name, parts in runs.items():
        (out / name).mkdir(parents=True, exist_ok=True)
        for steps, resume in parts:
            train = TrainConfig(max_steps=steps, resume=resume, save_every=1, batch_size=4, lr=5e-3,
                                warmup_ratio=0.0, schedule="constant", log_every=1, precision="fp32", threads=1,
                                distributed="fsdp")
            state = sft.setup(model_dir, _rows(9), _rows(3), AdapterConfig(method="lora", r=4, alpha=8), train,
                              seed=0)
            sft.fit(state, train, log_path=out / name / "train_log.jsonl" if distributed.is_main() else None,
                    ckpt_dir=out / name / "checkpoints")
        sft.save(state, out / name)


RECIPES = {"classify": _train_classify, "dpo": _train_dpo}
RUNS = {**RECIPES, "fsdp_resume": _train_resumed}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, model_dir: str, out: Path, port: int) -> None:
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    _main(model_dir, out, ["ddp", "fsdp", *RUNS])


def _main(model_dir: str, out: Path, modes: list) -> None:
    distributed.init()
    for mode in modes:
        RUNS[mode](model_dir, out / mode) if mode in RUNS else _train(model_dir, out / mode, mode)
    distributed.close()


def _torchrun(model_dir: Path, out: Path, *modes: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), __file__, str(model_dir), str(out), *modes]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _losses(run: Path) -> list:
    return [r["loss"] for r in map(json.loads, (run / "train_log.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.fixture(scope="module")
def single(tiny_lm_dir, tmp_path_factory, one_thread) -> Path:
    out = tmp_path_factory.mktemp("single")
    _train(str(tiny_lm_dir), out, "ddp")  # one process: init() is a no-op, the mode is ignored
    return out


@pytest.fixture(scope="module")
def forked(tiny_lm_dir, tmp_path_factory, one_thread) -> Path:
    """ddp/ and fsdp/ from 2 worker processes forked from a fork server: a clean single-threaded process that
    imports this module (torch, transformers, peft) once. Forking pytest itself was cheaper still, but a fork
    of a process whose earlier tests started thread pools can crash (a worker died of SIGSEGV once in ~8 runs
    of the suite)."""
    import multiprocessing

    import torch.multiprocessing as mp

    multiprocessing.get_context("forkserver").set_forkserver_preload([__name__])
    out = tmp_path_factory.mktemp("forked")
    mp.start_processes(_worker, args=(str(tiny_lm_dir), out, _free_port()), nprocs=2, start_method="forkserver")
    return out


@needs_two_devices
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one_with_the_same_global_batch(single, forked, mode):
    _assert_same_training(single, forked / mode)


@needs_two_devices
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_two_processes_match_one_for_the_other_recipes(tiny_lm_dir, forked, tmp_path, recipe):
    RECIPES[recipe](str(tiny_lm_dir), tmp_path)  # one process
    one, two = _losses(tmp_path), _losses(forked / recipe)
    assert len(one) == 3 and one == pytest.approx(two, abs=1e-5)
    a = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    b = load_file(forked / recipe / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=0), (k, (a[k] - b[k]).abs().max())


@needs_two_devices
def test_fsdp_checkpoint_resumes_exactly(forked):
    """Checkpoints under fsdp hold full (gathered) tensors and restore into the shards of a fresh setup."""
    resumed, straight = forked / "fsdp_resume" / "resumed", forked / "fsdp_resume" / "straight"
    # step 1 (before the stop) was pruned by keep_last 2; steps 2 and 3 were written by the resumed run
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["step-000002", "step-000003"]
    weights = load_file(resumed / "checkpoints" / "step-000002" / "trainable.safetensors")
    adapter = load_file(straight / "adapter" / "adapter_model.safetensors")
    assert len(weights) == len(adapter) and all(v.shape == adapter[_peft_key(k)].shape for k, v in weights.items())
    assert _losses(resumed) == pytest.approx(_losses(straight), abs=1e-5) and len(_losses(resumed)) == 3
    a = load_file(resumed / "adapter" / "adapter_model.safetensors")
    assert a.keys() == adapter.keys()
    for k in a:
        assert torch.allclose(a[k], adapter[k], atol=1e-5, rtol=0), (k, (a[k] - adapter[k]).abs().max())


def _peft_key(name: str) -> str:
    """A trainable parameter's name as peft saves it in adapter_model.safetensors (no adapter name)."""
    return name.replace(".default.", ".")


@needs_two_devices
@pytest.mark.slow
def test_torchrun_launch_matches_one_process(single, tiny_lm_dir, tmp_path):
    _torchrun(tiny_lm_dir, tmp_path, "ddp")
    _assert_same_training(single, tmp_path / "ddp")


def _assert_same_training(single: Path, multi: Path) -> None:
    assert [json.loads((multi / f"rank{r}.json").read_text())["world"] for r in (0, 1)] == [2, 2]
    assert sorted(p.name for p in multi.iterdir()) == ["adapter", "model", "rank0.json", "rank1.json",
                                                       "train_log.jsonl"]  # only rank 0 writes
    one, two = _losses(single), _losses(multi)
    assert len(one) == 3 and one == pytest.approx(two, abs=1e-5)
    a = load_file(single / "adapter" / "adapter_model.safetensors")
    b = load_file(multi / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=0), (k, (a[k] - b[k]).abs().max())
    moved = [k for k in a if "lora_B" in k and not torch.equal(a[k], torch.zeros_like(a[k]))]
    assert moved  # LoRA B starts at zero: the runs did train


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fsdp_on_one_gpu_with_nccl_trains_like_no_process_group(tiny_lm_dir, tmp_path):
    """The CUDA path (nccl, fully_shard on GPU, bf16 frozen weights, gathering for save) in a world of one."""
    import torch.distributed as dist

    plain, sharded = tmp_path / "plain", tmp_path / "sharded"
    _train(str(tiny_lm_dir), plain, "fsdp", "bf16")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        _train(str(tiny_lm_dir), sharded, "fsdp", "bf16")
    finally:
        distributed.close()
    assert _losses(plain) == pytest.approx(_losses(sharded), abs=1e-4)
    a = load_file(plain / "adapter" / "adapter_model.safetensors")
    b = load_file(sharded / "adapter" / "adapter_model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def test_unknown_mode_and_fsdp_limits_are_user_errors():
    with pytest.raises(UserError, match="train.distributed"):
        distributed.check_mode(TrainConfig(distributed="deepspeed"))
    distributed.check_mode(TrainConfig(distributed="fsdp", save_every=10))  # one process: fsdp is ignored


def test_single_process_helpers_are_no_ops():
    assert (distributed.rank(), distributed.world(), distributed.is_main()) == (0, 1, True)
    assert distributed.all_reduce_sum(3) == 3
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap(model, TrainConfig()) is model
    assert sft.local_share([1, 2, 3]) == [1, 2, 3]


if __name__ == "__main__":
    torch.set_num_threads(1)
    _main(sys.argv[1], Path(sys.argv[2]), sys.argv[3:])
