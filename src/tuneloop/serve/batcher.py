"""The model side of the local engine: continuous batching of decoding steps over one shared KV cache.

    runner = Runner.load("runs/airline/model")         # causal LM or encoder, eval mode, safetensors only
    runner.admit(batch, [seq_a, seq_b])                 # one prefill forward for the newcomers, merged in
    runner.step(batch)                                  # one decoding forward for every running row

Everything here runs on the engine's single model thread; nothing here knows about HTTP or asyncio.
Requests join and leave the running batch between decoding steps, so a short answer never waits for a long
one and a new request waits at most one step (plus its own prefill) before it shares the forward passes.

Shapes: each layer of the running cache holds keys/values [B, H_kv, T, D] with rows left-padded to a common
T; `mask` [B, T] marks real positions, so a row's next position id is mask[b].sum(). Rows of different
adapters share a forward pass through peft's per-row `adapter_names`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from tuneloop.serve.types import Delta, SamplingParams, TokenLogprob

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


@dataclass
class Seq:
    """One generation request while it decodes."""

    request_id: str
    prompt_ids: list
    params: SamplingParams
    adapter: str | None
    emit: Callable[[Delta], None]  # thread-safe sink towards the waiting coroutine
    generated: list = field(default_factory=list)
    sent: int = 0  # characters of the answer already emitted
    pending: int = -1  # last sampled token, not yet in the cache
    finish: str | None = None
    rng: torch.Generator | None = None


@dataclass
class Batch:
    rows: list = field(default_factory=list)
    cache: object = None  # transformers DynamicCache, rows aligned with `rows`
    mask: torch.Tensor | None = None  # [B, T]


def _pad_left(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    if n == 0:
        return t
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class Runner:
    def __init__(self, model, tok, kind: str, normalize: bool = False):
        self.model, self.tok, self.kind, self.normalize = model, tok, kind, normalize
        self.device = next(model.parameters()).device
        self.adapters: dict[str, str] = {}  # name -> folder
        self.stop_ids: set = set()
        if kind == "generate":
            from tuneloop.train.batching import end_of_turn_ids

            self.stop_ids = end_of_turn_ids(tok)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        # transformers 5.2x renamed `past_key_values` to `cache` (the old name warns); accept either.
        params = inspect.signature(type(model).forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"

    @classmethod
    def load(cls, path: str, dtype=torch.float32) -> "Runner":
        """Causal LM if the config names one, else an encoder for embeddings. Never remote code or pickle."""
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

        from tuneloop.models.sources import load_tokenizer

        cfg = AutoConfig.from_pretrained(path)
        causal = any(a.endswith("ForCausalLM") for a in (cfg.architectures or []))
        auto = AutoModelForCausalLM if causal else AutoModel
        model = auto.from_pretrained(path, dtype=dtype, use_safetensors=True)
        model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
        modules = Path(path) / "modules.json"  # sentence-transformers layout: is there a Normalize step?
        normalize = modules.is_file() and "Normalize" in modules.read_text()
        return cls(model, load_tokenizer(path), "generate" if causal else "embed", normalize)

    # ---- adapters ----

    def load_adapter(self, name: str, folder: str) -> None:
        from peft import PeftModel

        if not (Path(folder) / "adapter_model.safetensors").is_file():
            raise ValueError(f"{folder} has no adapter_model.safetensors (only safetensors adapters load)")
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(folder, adapter_name=name, is_trainable=False)
        else:
            self.model = PeftModel.from_pretrained(self.model, folder, adapter_name=name, is_trainable=False)
        self.model.eval()
        self.adapters[name] = folder

    def unload_adapter(self, name: str) -> None:
        if len(self.adapters) == 1:  # the last one: strip the LoRA layers, back to the plain base model
            self.model = self.model.unload()
        else:
            self.model.delete_adapter(name)
        del self.adapters[name]

    def _adapter_kw(self, rows: list) -> dict:
        # With any adapter loaded the model is peft-wrapped and would apply its *active* adapter to every row,
        # so every forward names each row's adapter, base rows included.
        return {"adapter_names": [r.adapter or BASE for r in rows]} if self.adapters else {}

    # ---- generation ----

    def admit(self, batch: Batch, seqs: list) -> None:
        """Prefill the newcomers in one left-padded forward, sample their first token, merge into `batch`."""
        width = max(len(s.prompt_ids) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for b, s in enumerate(seqs):
            ids[b, width - len(s.prompt_ids):] = torch.tensor(s.prompt_ids)
            mask[b, width - len(s.prompt_ids):] = 1
            if s.params.seed is not None:
                s.rng = torch.Generator().manual_seed(s.params.seed % 2**63)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                         position_ids=pos.to(self.device), use_cache=True, logits_to_keep=1,
                         **self._adapter_kw(seqs))
        self._merge(batch, seqs, getattr(out, self.cache_arg), mask.to(self.device))
        self._advance(seqs, out.logits[:, -1].float())
        self._drop_finished(batch)

    def step(self, batch: Batch) -> None:
        """One decoding step: every running row feeds its pending token through one shared forward."""
        rows = batch.rows
        ids = torch.tensor([[s.pending] for s in rows], device=self.device)
        pos = batch.mask.sum(-1, keepdim=True)  # [B, 1]: real tokens so far = position of the new one
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(rows), 1))], dim=1)
        out = self.model(input_ids=ids, attention_mask=batch.mask, position_ids=pos, use_cache=True,
                         **{self.cache_arg: batch.cache}, **self._adapter_kw(rows))
        batch.cache = getattr(out, self.cache_arg)
        self._advance(rows, out.logits[:, -1].float())
        self._drop_finished(batch)

    def drop(self, batch: Batch, request_ids: set) -> None:
        for s in batch.rows:
            if s.request_id in request_ids:
                s.finish = "abort"
        self._drop_finished(batch, notify=False)

    def _merge(self, batch: Batch, seqs: list, cache, mask: torch.Tensor) -> None:
        if not batch.rows:
            batch.rows, batch.cache, batch.mask = list(seqs), cache, mask
            return
        old, new = batch.mask.shape[1], mask.shape[1]
        width = max(old, new)
        for mine, theirs in zip(batch.cache.layers, cache.layers):
            mine.keys = torch.cat([_pad_left(mine.keys, width - old, 2), _pad_left(theirs.keys, width - new, 2)])
            mine.values = torch.cat([_pad_left(mine.values, width - old, 2),
                                     _pad_left(theirs.values, width - new, 2)])
        batch.mask = torch.cat([_pad_left(batch.mask, width - old, 1), _pad_left(mask, width - new, 1)])
        batch.rows += seqs

    def _drop_finished(self, batch: Batch, notify: bool = True) -> None:
        keep = [i for i, s in enumerate(batch.rows) if s.finish is None]
        if len(keep) == len(batch.rows):
            return
        if not keep:
            batch.rows, batch.cache, batch.mask = [], None, None
            return
        batch.cache.batch_select_indices(torch.tensor(keep, device=self.device))
        batch.rows = [batch.rows[i] for i in keep]
        batch.mask = batch.mask[keep]
        # Columns that are padding in every remaining row are dead weight in each attention: cut them.
        first = int(batch.mask.any(0).nonzero()[0])
        if first:
            batch.mask = batch.mask[:, first:]
            for layer in batch.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]

    def _advance(self, rows: list, logits: torch.Tensor) -> None:
        """Sample one token per row from `logits` [B, V], record it, emit the new text."""
        logp = torch.log_softmax(logits, dim=-1)
        greedy = logits.argmax(-1).tolist()
        for b, s in enumerate(rows):
            p = s.params
            token = greedy[b] if p.temperature == 0 else _sample(logits[b], p.temperature, p.top_p, s.rng)
            lp = self._logprob(logp[b], token, p.top_logprobs) if p.logprobs else None
            self._append(s, token, lp)

    def _logprob(self, row: torch.Tensor, token: int, top: int) -> TokenLogprob:
        tops = []
        if top:
            values, idx = row.topk(top)
            tops = [(self.token_text(i), v) for i, v in zip(idx.tolist(), values.tolist())]
        return TokenLogprob(self.token_text(token), float(row[token]), tops)

    def _append(self, s: Seq, token: int, lp: TokenLogprob | None) -> None:
        p = s.params
        stopped = token in self.stop_ids
        if not stopped:
            s.generated.append(token)
            s.pending = token
        text = self.tok.decode(s.generated, skip_special_tokens=True)
        cut = min((i for i in (text.find(x) for x in p.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, stopped = text[:cut], True
        if stopped:
            s.finish = "stop"
        elif len(s.generated) >= p.max_tokens:
            s.finish = "length"
        end = len(text)
        if s.finish is None:
            # Hold back what may be the start of a stop string or half of a multi-byte character.
            hold = max((len(x) - 1 for x in p.stop), default=0)
            end = max(s.sent, len(text.rstrip("\ufffd")) - hold)
        delta = Delta(text[s.sent:end], [lp] if lp and not stopped else [], s.finish,
                      len(s.prompt_ids), len(s.generated))
        s.sent = end
        s.emit(delta)

    def token_text(self, token: int) -> str:
        return self.tok.decode([token])

    # ---- scoring and embeddings ----

    def score(self, ids: list, adapter: str | None, top: int) -> list:
        """Log-probability of each prompt token given the ones before it (None for the first): echo logprobs."""
        x = torch.tensor([ids], device=self.device)
        kw = {"adapter_names": [adapter or BASE]} if self.adapters else {}
        logp = torch.log_softmax(self.model(input_ids=x, **kw).logits[0, :-1].float(), dim=-1)  # [T-1, V]
        out = [TokenLogprob(self.token_text(ids[0]), None, [])]
        for t in range(1, len(ids)):
            tops = []
            if top:
                values, idx = logp[t - 1].topk(top)
                tops = [(self.token_text(i), v) for i, v in zip(idx.tolist(), values.tolist())]
            out.append(TokenLogprob(self.token_text(ids[t]), float(logp[t - 1, ids[t]]), tops))
        return out

    def embed(self, inputs: list) -> list:
        """Mean-pooled (and, for sentence-transformers folders that say so, L2-normalized) vectors."""
        width = max(len(x) for x in inputs)
        ids = torch.full((len(inputs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(inputs), width), dtype=torch.long)
        for b, x in enumerate(inputs):
            ids[b, : len(x)], mask[b, : len(x)] = torch.tensor(x), 1
        hidden = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
        m = mask.to(self.device).unsqueeze(-1).to(hidden.dtype)
        vec = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        if self.normalize:
            vec = torch.nn.functional.normalize(vec, dim=-1)
        return vec.float().cpu().tolist()


def _sample(logits: torch.Tensor, temperature: float, top_p: float, rng) -> int:
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least the top token)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=rng))
