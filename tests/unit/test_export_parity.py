"""Parity check: passes for a faithful export, fails when the exported weights or tokenizer are wrong."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoTokenizer

from tests.unit.test_export_run import make_run
from tuneloop.export import parity, source

PROMPTS = source.BUILTIN_PROMPTS[:2]


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_lm_dir):
    src = source.read_run(make_run(tmp_path_factory.mktemp("run"), tiny_lm_dir, seed=4))
    return source.load_trained(src, merge=False), source.load_trained(src, merge=True), source.load_tokenizer(src)


def test_faithful_export_passes(models):
    reference, folded, tok = models
    report = parity.check(reference, tok, folded, tok, PROMPTS, parity.TOLERANCE["f32"], max_new_tokens=8)
    assert report["passed"] and report["greedy_equal"] == len(PROMPTS) and report["tokenizer_match"]
    assert 0 <= report["max_rel_logit_diff"] < parity.TOLERANCE["f32"]
    assert all(r["reference_ids"] == r["exported_ids"] and r["reference_ids"] for r in report["results"])


def test_perturbed_weights_fail(models):
    reference, folded, tok = models
    broken = copy.deepcopy(folded)
    with torch.no_grad():
        w = broken.model.layers[1].mlp.down_proj.weight
        w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(0)) * 0.05)
    report = parity.check(reference, tok, broken, tok, PROMPTS, parity.TOLERANCE["f16"], max_new_tokens=8)
    assert not report["passed"]
    assert report["max_rel_logit_diff"] > parity.TOLERANCE["f16"]
    assert "FAILED" in parity.summary(report)


def test_a_lost_chat_template_fails(models):
    reference, folded, tok = models
    other = AutoTokenizer.from_pretrained(tok.name_or_path)
    other.chat_template = tok.chat_template.replace("<|im_start|>assistant", "<|im_start|>bot")
    report = parity.check(reference, tok, folded, other, PROMPTS[:1], parity.TOLERANCE["f32"], max_new_tokens=4)
    assert not report["tokenizer_match"] and not report["passed"]
