"""`tuneloop export RUN_DIR --format merged|gguf`: write the artifact, then prove it answers like the run.

    tuneloop export runs/airline-sentiment --format merged                 # -> export/merged-f32/
    tuneloop export runs/airline-sentiment --format gguf --dtype f16       # -> export/gguf-f16/model-f16.gguf

Steps: merge base + adapter (fp32) -> write the artifact -> load it back the way a runtime would (plain
transformers for merged, transformers' GGUF loader for gguf) -> parity check against the trained model
(base + adapter, unmerged) on N prompts -> export.json + parity.json in the export folder. Exit status 1
when parity fails, so a CI step or a Makefile stops before shipping a broken artifact.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from tuneloop.errors import UserError


def _say(msg: str) -> None:
    print(f"[tuneloop] {msg}", flush=True)


def write_artifact(fmt: str, model, tok, out: Path, dtype: str, name: str) -> dict:
    """Write the merged folder or the GGUF file into `out`; returns what was written."""
    from tuneloop.export import gguf, merged

    if fmt == "merged":
        merged.save_merged(model, tok, out, dtype)
        problems = merged.check_layout(out)
        if problems:
            raise RuntimeError(f"merged export is incomplete: {', '.join(problems)}")
        return {"path": str(out)}
    file = out / f"model-{dtype}.gguf"
    info = gguf.write_gguf(model, tok, file, dtype, name)
    gguf.write_modelfile(out, file.name, tok)
    return {"path": str(file), **info}


def load_artifact(fmt: str, artifact: dict):
    """(model, tokenizer) loaded the way a runtime would, in fp32 so only the export's rounding shows."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(artifact["path"])
    if fmt == "merged":
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        return model.eval(), AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def export(run_dir: str, fmt: str, out: str | None, dtype: str, n_prompts: int, max_new_tokens: int) -> dict:
    """Export a run and check parity; returns the parity report (also written to OUT/parity.json)."""
    from tuneloop.export import parity, source

    timings: dict = {}
    src = source.read_run(run_dir)
    target = Path(out) if out else src.run_dir / "export" / f"{fmt}-{dtype}"
    if target.exists():
        shutil.rmtree(target)
    t = time.time()
    tok = source.load_tokenizer(src)
    model = source.load_trained(src, merge=True)
    timings["merge_s"] = round(time.time() - t, 2)
    t = time.time()
    artifact = write_artifact(fmt, model, tok, target, dtype, src.run_dir.name)
    timings["write_s"] = round(time.time() - t, 2)
    del model
    _say(f"wrote {fmt} ({dtype}) -> {artifact['path']}")

    t = time.time()
    candidate, cand_tok = load_artifact(fmt, artifact)
    reference = source.load_trained(src, merge=False)
    timings["load_s"] = round(time.time() - t, 2)
    t = time.time()
    prompts, origin = source.parity_prompts(src, n_prompts)
    report = parity.check(reference, tok, candidate, cand_tok, prompts, parity.TOLERANCE[dtype], max_new_tokens)
    timings["parity_s"] = round(time.time() - t, 2)
    report.update({"format": fmt, "dtype": dtype, "prompt_source": origin,
                   "reference": "base + adapter (unmerged)" if src.adapter_dir else "run model/"})
    parity.write(report, target)
    _write_manifest(target, src, fmt, dtype, artifact, timings)
    _say(parity.summary(report))
    return report


def _write_manifest(target: Path, src, fmt: str, dtype: str, artifact: dict, timings: dict) -> None:
    files = {p.name: p.stat().st_size for p in sorted(target.iterdir()) if p.is_file()}
    manifest = {"format": fmt, "dtype": dtype, "run": str(src.run_dir.resolve()),
                "base_model": str(src.base_path) if src.base_path else None,
                "adapter": str(src.adapter_dir) if src.adapter_dir else None,
                "artifact": artifact, "files": files, "timings": timings}
    (target / "export.json").write_text(json.dumps(manifest, indent=2))


def cmd_export(args: list) -> int:
    """Export a run as a merged safetensors folder or a GGUF file, with a parity check."""
    p = argparse.ArgumentParser(prog="tuneloop export", description=cmd_export.__doc__)
    p.add_argument("run_dir", help="run folder written by `tuneloop run` (needs adapter/ or model/)")
    p.add_argument("--format", choices=("merged", "gguf"), required=True,
                   help="merged: safetensors folder for transformers/vLLM; gguf: one file for llama.cpp/Ollama")
    p.add_argument("--out", help="export folder (default: RUN_DIR/export/FORMAT-DTYPE; replaced if present)")
    p.add_argument("--dtype", choices=("f16", "f32"), default="f32", help="weight precision (default f32)")
    p.add_argument("--prompts", type=int, default=5,
                   help="parity prompts, from RUN_DIR/data/test.jsonl when present (default 5)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="greedy answer length compared (default 32)")
    ns = p.parse_args(args)
    if ns.prompts < 1:
        raise UserError("--prompts must be at least 1: every export is checked against the trained model")
    report = export(ns.run_dir, ns.format, ns.out, ns.dtype, ns.prompts, ns.max_new_tokens)
    return 0 if report["passed"] else 1
