"""Cleaning, PII redaction (precision/recall on a labelled set), MinHash dedup, bias audit, mitigations, report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tuneloop.config import DataConfig
from tuneloop.data import audit, dedup, pii
from tuneloop.data.clean import clean_text
from tuneloop.data.prepare import prepare

ASSETS = Path(__file__).parents[1] / "assets"


def test_clean_text():
    assert clean_text("Iâ€™m stuck   at JFK\x07 &amp; cold") == "I'm stuck at JFK & cold"
    assert clean_text("cafe\u0301") == "caf\u00e9"  # NFC
    assert clean_text("<p>Hi <b>there</b></p><script>x()</script>", strip_html=True) == "Hi there"
    assert clean_text("a\n\n\n\nb  c") == "a\n\nb c"
    # repair off: the characters stay (no ftfy), the rest of the cleaning is the same
    assert clean_text("Iâ€™m stuck   at JFK\x07 &amp; cold", repair=False) == "Iâ€™m stuck at JFK &amp; cold"
    assert clean_text("cafe\u0301  ok\r\n", repair=False) == "caf\u00e9 ok"


def test_repair_text_off_keeps_characters_through_prepare(tmp_path):
    src = tmp_path / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Iâ€™m at gate {i} &amp; cafe\u0301"},
                          {"role": "assistant", "content": "ok"}]} for i in range(40)]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = {}
    for repair in (True, False):
        cfg = DataConfig(source=str(src), task="generation", repair_text=repair, dedup="exact")
        out = tmp_path / f"out{repair}"
        res = prepare(cfg, None, out, 0)
        got[repair] = {ex.messages[0]["content"] for split in res.splits.values() for ex in split}
        assert json.loads((out / "manifest.json").read_text())["cleaning"]["repair_text"] is repair
    assert got[True] == {f"I'm at gate {i} & caf\u00e9" for i in range(40)}
    assert got[False] == {f"Iâ€™m at gate {i} &amp; caf\u00e9" for i in range(40)}


def test_pii_precision_recall_on_labelled_set():
    rows = [json.loads(x) for x in (ASSETS / "pii_labelled.jsonl").read_text().splitlines()]
    tp = fp = fn = 0
    for r in rows:
        got = {(typ, r["text"][s:e]) for s, e, typ in pii.find(r["text"])}
        gold = {tuple(x) for x in r["pii"]}
        tp, fp, fn = tp + len(got & gold), fp + len(got - gold), fn + len(gold - got)
    assert tp / (tp + fp) >= 0.95 and tp / (tp + fn) >= 0.95


def test_pii_placeholders_and_checksums():
    text, counts = pii.redact("card 4111 1111 1111 1111, not 4111 1111 1111 1112; ssn 536-22-1947")
    assert text == "card <CREDIT_CARD>, not 4111 1111 1111 1112; ssn <SSN>" and counts == {"credit_card": 1, "ssn": 1}
    assert pii.iban_ok("DE89 3704 0044 0532 0130 00") and not pii.iban_ok("DE88 3704 0044 0532 0130 00")
    assert pii.redact("x", pii.parse_types("none"))[0] == "x"


def test_minhash_estimates_jaccard_and_finds_planted_pairs():
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(5000)]
    base = [" ".join(rng.choice(vocab, 40)) for _ in range(300)]
    near = [b.rsplit(" ", 2)[0] for b in base[:100]]  # drop the last two words: Jaccard ~0.95
    sigs = dedup.minhash(base + near)
    est = (sigs[0] == sigs[300]).mean()
    assert abs(est - dedup.jaccard(base[0], near[0])) < 0.1
    pairs = dedup.near_pairs(sigs, 0.8)
    found = {(int(a), int(b)) for a, b in pairs}
    assert {(300 + i, i) for i in range(100)} <= found and len(found) == 100
    of = dedup.greedy_duplicates(pairs, len(sigs))
    assert (of[300:] == np.arange(100)).all() and (of[:300] == -1).all()


def test_minhash_is_seeded_and_reproducible():
    texts = ["the quick brown fox", "jumps over the lazy dog"]
    assert (dedup.minhash(texts) == dedup.minhash(texts)).all()
    assert not (dedup.minhash(texts, seed=2) == dedup.minhash(texts)).all()


def test_identity_terms_come_from_weat():
    terms = audit.identity_terms()
    assert ("sister", False) in terms["gender:female"] and ("Jamal", True) in terms["race:african_american_names"]
    m = audit.matchers(terms)
    names = m[0]
    mask = audit.group_mask("My sister flew with Jamal, a bill for my wheelchair", m)
    hit = {names[i] for i in range(len(names)) if mask >> i & 1}
    assert hit == {"gender:female", "race:african_american_names", "disability:disability"}
    assert audit.group_mask("I paid the bill", m) == 0  # names are case-sensitive
    pairs = audit.swap_pairs()
    assert audit.counterfactual("He called his brother", pairs, audit.swap_regex(pairs)) == "She called hers sister"


def _biased_rows(n: int) -> list:
    rows = []
    for i in range(n):
        who = ["my mother", "my father"][i % 2]
        label = "positive" if (i % 2 == 0 or i % 6 == 1) else "negative"  # mothers all positive
        rows.append({"text": f"{who} booked flight {i} to gate {i * 3} and seat {i * 7}", "label": label})
    return rows


def test_audit_flags_and_mitigations_and_report(tmp_path, tokenizer):
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in _biased_rows(120)))
    cfg = DataConfig(source=str(p), labels=["negative", "positive"], train_size=0.6, validation_size=0.2,
                     test_size=0.2, counterfactual=True, group_balance="reweight", near_dup_threshold=0.95,
                     contamination_threshold=0, audit_threshold=0.1, instruction="Rate it.")
    res = prepare(cfg, tokenizer, tmp_path / "o", 0)
    m = res.manifest
    flagged = {(f["group"], f["label"]) for f in m["audit"]["flags"]}
    assert ("gender:female", "positive") in flagged and ("gender:male", "negative") in flagged
    assert set(m["audit"]["label_distribution"]) == {"train", "validation", "test"}
    assert m["mitigations"]["counterfactual_added"] == res.ledger.to_dict()["kept"] - 48  # every train row swaps
    train = res.splits["train"]
    cf = [ex for ex in train if ex.meta.get("augmented") == "counterfactual"]
    assert cf and all("father" in ex.messages[1]["content"] or "mother" in ex.messages[1]["content"] for ex in cf)
    assert all("weight" in ex.meta for ex in train if "augmented" not in ex.meta)
    assert {ex.meta["weight"] for ex in train if "augmented" not in ex.meta} != {1.0}
    report = (tmp_path / "o" / "report.html").read_text()
    for section in ("Funnel", "Rejections by rule", "Token lengths", "Label balance", "Identity terms",
                    "Masking preview", "<svg", "class='t'"):
        assert section in report


def test_resample_adds_rare_cells(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in _biased_rows(120)))
    cfg = DataConfig(source=str(p), train_size=0.6, validation_size=0.2, test_size=0.2, group_balance="resample",
                     near_dup_threshold=0.95, contamination_threshold=0)
    res = prepare(cfg, None, tmp_path / "o", 0)
    added = res.manifest["mitigations"]["group_balance_detail"]["added"]
    assert added > 0 and len(res.splits["train"]) == 72 + added


def test_contamination_removed_from_train(tmp_path):
    rows = [{"text": f"unique text number {i} about route {i * 11} and delay {i * 5}", "label": "a"} for i in range(40)]
    rows += [{"text": r["text"] + " today", "label": "a"} for r in rows]  # near copies of every row
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DataConfig(source=str(p), dedup="exact", contamination_threshold=0.7, train_size=0.5,
                     validation_size=0.1, test_size=0.1)
    res = prepare(cfg, None, tmp_path / "o", 0)
    assert res.manifest["dedup"]["contamination_removed"] == res.ledger.dropped["contamination"] > 0
    sigs = lambda xs: dedup.minhash([ex.messages[-2]["content"] for ex in xs])  # noqa: E731
    ev, tr = sigs(res.splits["test"] + res.splits["validation"]), sigs(res.splits["train"])
    assert ((tr[:, None, :] == ev[None, :, :]).mean(-1) < 0.7).all()
