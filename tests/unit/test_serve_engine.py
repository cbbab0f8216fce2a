"""The local engine on a tiny random Llama: batching == unbatched greedy, stop/abort/seed, adapters.

The conftest model predicts nearly flat logits (a 0.02-std init), so its greedy answers are one repeated
token; `sharp_lm_dir` re-draws the weights with a larger std so answers vary token by token, which is what
makes "batched == unbatched" a meaningful comparison.
"""

from __future__ import annotations

import asyncio
import shutil

import pytest
import torch

from tuneloop.serve.engine import LocalEngine
from tuneloop.serve.types import GenerationRequest, SamplingParams


def make_sharp_lm(src, dst, seed: int = 1):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0, 0.3)
    model.save_pretrained(dst)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(src / f, dst / f)
    return dst


def make_adapter(base_dir, dst, seed: int = 2):
    """A LoRA adapter with non-zero random weights (so it changes outputs), saved as safetensors."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(dst)
    return dst, peft_model.eval()


@pytest.fixture(scope="session")
def sharp_lm_dir(tiny_lm_dir, tmp_path_factory):
    return make_sharp_lm(tiny_lm_dir, tmp_path_factory.mktemp("sharp-llama"))


PROMPTS = [[{"role": "user", "content": "hello " * (3 * i + 1)}] for i in range(6)]


async def _answer(engine, rid, messages, model="tiny", **params):
    ids = engine.encode_chat(messages)
    text, last = "", None
    async for d in engine.generate(GenerationRequest(rid, model, ids, SamplingParams(**params))):
        text, last = text + d.text, d
    return text, last.finish_reason, last.completion_tokens


def _run_all(path, max_batch, prompts, **params):
    async def main():
        async with LocalEngine(str(path), "tiny", max_batch=max_batch) as eng:
            return await asyncio.gather(*[_answer(eng, f"r{i}", m, max_tokens=10 + i, **params)
                                          for i, m in enumerate(prompts)])
    return asyncio.run(main())


def test_batched_equals_unbatched_and_transformers_generate(sharp_lm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneloop.train.batching import end_of_turn_ids, render_ids

    batched = _run_all(sharp_lm_dir, 8, PROMPTS, temperature=0.0)
    unbatched = _run_all(sharp_lm_dir, 1, PROMPTS, temperature=0.0)
    assert batched == unbatched
    assert len({text for text, _, _ in batched}) == len(PROMPTS)  # the model really answers differently
    tok = AutoTokenizer.from_pretrained(sharp_lm_dir)
    model = AutoModelForCausalLM.from_pretrained(sharp_lm_dir).eval()
    for i, msgs in enumerate(PROMPTS):  # and both equal plain transformers greedy decoding
        ids = torch.tensor([render_ids(tok, msgs, add_generation_prompt=True)])
        out = model.generate(ids, max_new_tokens=10 + i, do_sample=False, eos_token_id=sorted(end_of_turn_ids(tok)))
        assert tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True) == batched[i][0]


def test_stop_string_seed_and_abort(sharp_lm_dir):
    async def main():
        async with LocalEngine(str(sharp_lm_dir), "tiny", max_batch=4) as eng:
            full, _, _ = await _answer(eng, "a", PROMPTS[0], max_tokens=12, temperature=0.0)
            stop = full[len(full) // 2: len(full) // 2 + 3]
            cut, finish, _ = await _answer(eng, "b", PROMPTS[0], max_tokens=12, temperature=0.0, stop=[stop])
            assert finish == "stop" and cut == full[: full.index(stop)]
            s1 = await _answer(eng, "c", PROMPTS[1], max_tokens=8, temperature=1.0, seed=7)
            s2 = await _answer(eng, "d", PROMPTS[1], max_tokens=8, temperature=1.0, seed=7)
            assert s1 == s2
            # a consumer that walks away mid-answer frees its batch slot
            gen = eng.generate(GenerationRequest("long", "tiny", eng.encode_chat(PROMPTS[2]),
                                                 SamplingParams(max_tokens=400, temperature=0.0)))
            first = await gen.__anext__()
            assert first.finish_reason is None
            await gen.aclose()
            for _ in range(200):
                health = await eng.health()
                if health["running"] == 0:
                    break
                await asyncio.sleep(0.01)
            assert health == {"status": "ok", "model": "tiny", "adapters": [], "running": 0, "waiting": 0}
    asyncio.run(main())


def test_adapters_load_mix_and_unload(sharp_lm_dir, tmp_path):
    from tuneloop.train.batching import render_ids

    folder, peft_model = make_adapter(sharp_lm_dir, tmp_path / "adapter")

    async def main():
        async with LocalEngine(str(sharp_lm_dir), "tiny", max_batch=8) as eng:
            base_alone = await _answer(eng, "b0", PROMPTS[3], max_tokens=8, temperature=0.0)
            await eng.load_adapter("lora", str(folder))
            assert eng.models() == {"tiny": None, "lora": "tiny"}
            # base and adapter rows decoding in the same forward passes
            mixed = await asyncio.gather(_answer(eng, "b1", PROMPTS[3], max_tokens=8, temperature=0.0),
                                         _answer(eng, "l1", PROMPTS[3], "lora", max_tokens=8, temperature=0.0))
            await eng.unload_adapter("lora")
            assert eng.models() == {"tiny": None}
            after = await _answer(eng, "b2", PROMPTS[3], max_tokens=8, temperature=0.0)
            return base_alone, mixed, after, eng.runner.tok

    base_alone, (base_mixed, lora_mixed), after, tok = asyncio.run(main())
    assert base_mixed == base_alone == after
    assert lora_mixed[0] != base_alone[0]
    ids = torch.tensor([render_ids(tok, PROMPTS[3], add_generation_prompt=True)])
    with torch.no_grad():
        ref = peft_model.generate(input_ids=ids, max_new_tokens=8, do_sample=False)
    assert tok.decode(ref[0, ids.shape[1]:], skip_special_tokens=True).startswith(lora_mixed[0])


def test_adapter_without_safetensors_is_refused(sharp_lm_dir, tmp_path):
    folder, _ = make_adapter(sharp_lm_dir, tmp_path / "adapter")
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")

    async def main():
        async with LocalEngine(str(sharp_lm_dir), "tiny") as eng:
            with pytest.raises(ValueError, match="safetensors"):
                await eng.load_adapter("lora", str(folder))
    asyncio.run(main())
