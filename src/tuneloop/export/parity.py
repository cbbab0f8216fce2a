"""Parity check: does the exported artifact answer like the trained model?

    report = check(reference, ref_tok, candidate, cand_tok, prompts, tolerance=TOLERANCE["f32"])
    report["passed"], report["max_abs_logit_diff"]     # also written to EXPORT_DIR/parity.json

For each chat prompt, three things are compared:
1. tokenizer: the artifact's tokenizer renders the chat (with its own chat template) to the same ids;
2. greedy answer: the artifact's greedy tokens equal the trained model's. A divergence is accepted only at
   a near-tie, where the trained model's own logits for the two candidates differ by <= the tolerance
   (f16 rounding may legitimately flip such a step); anything else fails;
3. logits: both models score the same sequence (prompt + trained answer) and the max abs difference must
   be <= tolerance x the largest |logit| of the trained model on that sequence (relative, so one number
   fits a tiny random model with logits near 0.5 and SmolLM2 with logits near 40); looser for f16.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# Allowed max |logit diff| relative to the trained model's max |logit|, by exported weight dtype.
# Measured on SmolLM2-135M + random LoRA (max |logit| 37.7): f32 1.5e-4 abs = 3.9e-6 relative (the merge's
# summation-order noise); f16 4.2e-2..6.6e-2 abs = 1.1e-3..1.7e-3 relative (rounding every weight to 11
# bits). Both limits leave 6-25x headroom; a perturbed export lands well above them.
TOLERANCE = {"f32": 1e-4, "f16": 1e-2}


@torch.no_grad()
def greedy_ids(model, prompt_ids: list, max_new_tokens: int, stop: list, pad: int) -> list:
    ids = torch.tensor([prompt_ids])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, top_p=None,
                         top_k=None, temperature=None, max_new_tokens=max_new_tokens, eos_token_id=stop,
                         pad_token_id=pad)
    return out[0, len(prompt_ids):].tolist()


@torch.no_grad()
def sequence_logits(model, ids: list) -> torch.Tensor:
    """(len(ids), vocab) fp32 logits for one sequence."""
    return model(input_ids=torch.tensor([ids])).logits[0].float()


def _first_divergence(a: list, b: list) -> int | None:
    for j in range(min(len(a), len(b))):
        if a[j] != b[j]:
            return j
    return None if len(a) == len(b) else min(len(a), len(b))


def compare_prompt(reference, candidate, ref_tok, cand_tok, conv: list, tol: float, max_new: int) -> dict:
    from tuneloop.train.batching import end_of_turn_ids, render_ids

    ref_ids = render_ids(ref_tok, conv, add_generation_prompt=True)
    cand_ids = render_ids(cand_tok, conv, add_generation_prompt=True)
    stop = sorted(end_of_turn_ids(ref_tok))
    pad = ref_tok.pad_token_id if ref_tok.pad_token_id is not None else stop[0]
    ref_gen = greedy_ids(reference, ref_ids, max_new, stop, pad)
    cand_gen = greedy_ids(candidate, cand_ids, max_new, sorted(end_of_turn_ids(cand_tok)), pad)
    seq = ref_ids + ref_gen
    ref_logits = sequence_logits(reference, seq)
    diff = (ref_logits - sequence_logits(candidate, seq)).abs().max().item()
    scale = ref_logits.abs().max().item()
    allowed = tol * scale
    rec = {"prompt": conv[-1]["content"][:200], "tokenizer_match": ref_ids == cand_ids,
           "reference": ref_tok.decode(ref_gen, skip_special_tokens=True).strip(),
           "exported": cand_tok.decode(cand_gen, skip_special_tokens=True).strip(),
           "reference_ids": ref_gen, "exported_ids": cand_gen,
           "greedy_equal": ref_gen == cand_gen, "max_abs_logit_diff": diff, "logit_scale": scale,
           "allowed_abs_diff": allowed}
    j = None if rec["greedy_equal"] else _first_divergence(ref_gen, cand_gen)
    if j is not None:
        # Logits that chose token j of the answer sit at position len(prompt) + j - 1 of the sequence.
        row = ref_logits[len(ref_ids) + j - 1]
        ref_tok_j = ref_gen[j] if j < len(ref_gen) else stop[0]
        cand_tok_j = cand_gen[j] if j < len(cand_gen) else stop[0]
        rec["first_divergence"] = j
        rec["divergence_gap"] = (row[ref_tok_j] - row[cand_tok_j]).item()
    rec["ok"] = rec["tokenizer_match"] and diff <= allowed and (j is None or rec["divergence_gap"] <= allowed)
    return rec


def check(reference, ref_tok, candidate, cand_tok, conversations: list, tolerance: float,
          max_new_tokens: int = 32) -> dict:
    """Compare `candidate` (the exported artifact) to `reference` (the trained model) on every prompt.

    `tolerance` is relative: allowed |logit diff| = tolerance x max |reference logit| per prompt."""
    rows = [compare_prompt(reference, candidate, ref_tok, cand_tok, c, tolerance, max_new_tokens)
            for c in conversations]
    return {
        "passed": all(r["ok"] for r in rows),
        "prompts": len(rows),
        "greedy_equal": sum(r["greedy_equal"] for r in rows),
        "near_tie_divergences": sum(not r["greedy_equal"] and r["ok"] for r in rows),
        "tokenizer_match": all(r["tokenizer_match"] for r in rows),
        "max_abs_logit_diff": max((r["max_abs_logit_diff"] for r in rows), default=0.0),
        "max_rel_logit_diff": max((r["max_abs_logit_diff"] / max(r["logit_scale"], 1e-12) for r in rows),
                                  default=0.0),
        "tolerance": tolerance,
        "max_new_tokens": max_new_tokens,
        "results": rows,
    }


def write(report: dict, folder: Path) -> Path:
    path = folder / "parity.json"
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return path


def summary(report: dict) -> str:
    verdict = "PASSED" if report["passed"] else "FAILED"
    return (f"parity {verdict}: {report['greedy_equal']}/{report['prompts']} greedy answers identical"
            f" ({report['near_tie_divergences']} near-tie divergences), tokenizer "
            f"{'matches' if report['tokenizer_match'] else 'DIFFERS'}, max |logit diff| "
            f"{report['max_abs_logit_diff']:.2e} = {report['max_rel_logit_diff']:.1e} of the logit range "
            f"(tolerance {report['tolerance']:g})")
