"""Stream rows out of data files, one at a time, each with the place it came from.

    for row in read_rows(Path("chats.jsonl")):     # Row(line=3, fields={"messages": [...]}, source="chats.jsonl")
        ...

Readers never hold a whole file in memory (JSON arrays excepted: that format has no streaming boundary) and
never crash on one bad row: a row that cannot be decoded comes back with `error=(rule, message)` (and no
fields) and the validation step turns it into a rejection with that rule id. Line numbers are 1-based
physical lines in text files (a quoted CSV field with newlines maps to the line where its record ends) and
1-based row numbers in Parquet, Arrow and JSON arrays.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import orjson

from tuneloop.data.speedups import digit_run
from tuneloop.errors import UserError

# A row larger than this is rejected (rule row_too_large) instead of being parsed: one 10 MB line in a chat
# file is almost always a concatenation bug, and parsing it would cost more than the rest of the file.
MAX_ROW_BYTES = 1_000_000
ARROW_BATCH = 4096  # rows per Arrow record batch: bounds memory for Parquet / datasets folders


@dataclass(slots=True)  # (one per input row: slots make it ~30% cheaper to build)
class Row:
    """One input record and where it came from."""

    line: int
    fields: dict
    source: str = ""
    error: tuple | None = None  # (rule id, message) for a record that could not be read; fields is then {}
    # hash of the record's bytes as read (JSONL lines): byte-identical lines have equal digests, so a consumer
    # can give a repeated line the verdict of its first copy without deciding it again (None: not known)
    digest: int | None = None


def _error(line: int, source: str, rule: str, message: str) -> Row:
    return Row(line, {}, source, (rule, message))


def check_path(path: Path) -> None:
    """Raise a UserError unless `path` is a readable data file of a known type or a saved `datasets` folder.

    Called before any row is read (and by `tuneloop run` before it loads a model), so bad paths fail fast."""
    if path.is_dir():
        return
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    if path.suffix.lower() not in READERS:
        raise UserError(f"{path}: unsupported file type '{path.suffix.lower()}' "
                        "(use .jsonl, .json, .csv, .tsv, .parquet or a saved datasets folder)")
    try:
        open(path, "rb").close()
    except OSError as e:
        raise UserError(f"{path}: cannot read file ({e.strerror})") from e


def read_rows(path: Path, max_row_bytes: int = MAX_ROW_BYTES) -> Iterator[Row]:
    """Yield rows from JSONL / JSON / CSV / TSV / Parquet files or a saved Hugging Face `datasets` folder."""
    check_path(path)
    if path.is_dir():
        yield from _read_hf_folder(path)
        return
    yield from READERS[path.suffix.lower()](path, max_row_bytes)


def _read_jsonl(path: Path, max_row_bytes: int) -> Iterator[Row]:
    src = str(path)
    with open(path, "rb") as f:
        for i, raw in enumerate(f, start=1):
            if i == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # UTF-8 byte-order mark written by some Windows editors
            if not raw or raw.isspace():  # (strip() would copy every line)
                continue
            if len(raw) > max_row_bytes:
                yield _error(i, src, "row_too_large", f"line is {len(raw):,} bytes (limit {max_row_bytes:,})")
                continue
            try:
                obj = _loads(raw)
            except UnicodeDecodeError as e:
                yield _error(i, src, "invalid_utf8", f"line is not valid UTF-8 (byte {e.start})")
                continue
            except json.JSONDecodeError as e:
                yield _error(i, src, "invalid_json", f"invalid JSON: {e.msg} at column {e.colno}")
                continue
            if not isinstance(obj, dict):
                yield _error(i, src, "not_an_object", f"expected a JSON object, got {type(obj).__name__}")
                continue
            yield Row(i, obj, src, None, hash(raw))


def _loads(raw: bytes):
    """orjson (~4x faster than json) for the common valid line; anything it refuses (invalid UTF-8 or JSON,
    NaN, lone-surrogate escapes) is parsed again by json, whose result and error messages are the reference.
    orjson turns integers over 64 bits into floats, so a line with a 19+ digit run goes to json directly."""
    if not digit_run(raw, 19):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw.decode("utf-8"))


def _read_json(path: Path, max_row_bytes: int) -> Iterator[Row]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 at byte {e.start}; re-save it as UTF-8") from e
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); for one record per line "
                        "use .jsonl") from e
    if isinstance(data, dict):  # {"data": [...]} style
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise UserError(f"{path}: expected a list of records or an object holding one list of records")
        data = lists[0]
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a list of records, got {type(data).__name__}")
    for i, obj in enumerate(data, start=1):
        if not isinstance(obj, dict):
            yield _error(i, str(path), "not_an_object", f"record {i} is a {type(obj).__name__}, not an object")
        else:
            yield Row(i, obj, str(path))


def _read_csv(path: Path, max_row_bytes: int) -> Iterator[Row]:
    """CSV/TSV with a header row; quoted fields may hold newlines and quotes (RFC 4180)."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    csv.field_size_limit(1 << 30)  # the size rule below rejects big rows; the csv default (128 KB) would crash
    src = str(path)
    with open(path, "rb") as fb:
        # errors="surrogateescape" keeps invalid bytes visible to the row check instead of failing the file
        text = io.TextIOWrapper(fb, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.reader(text, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            return
        header = [h.strip() for h in header]
        for rec in reader:
            line = reader.line_num
            if not any(rec):
                continue
            size = sum(len(v) for v in rec)
            if size > max_row_bytes:
                yield _error(line, src, "row_too_large", f"row is {size:,} characters (limit {max_row_bytes:,})")
            elif any(_has_surrogates(v) for v in rec):
                yield _error(line, src, "invalid_utf8", "row is not valid UTF-8")
            elif len(rec) != len(header):
                yield _error(line, src, "csv_column_count", f"row has {len(rec)} columns, header has {len(header)}")
            else:
                yield Row(line, dict(zip(header, rec)), src)


def _has_surrogates(value: str) -> bool:
    try:
        value.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def arrow_columns(path: Path) -> dict | None:
    """{column: Arrow type string} for Parquet files and datasets folders (None for text formats), so a
    column of the wrong type is reported once, before streaming, instead of as a rejection per row."""
    try:
        if path.is_file() and path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            schema = pq.read_schema(path)
        elif path.is_dir() and (path / "state.json").is_file():
            import pyarrow as pa

            first = json.loads((path / "state.json").read_text())["_data_files"][0]["filename"]
            with pa.memory_map(str(path / first)) as source:
                schema = pa.ipc.open_stream(source).schema
        else:
            return None
    except Exception as e:
        raise UserError(f"{path}: cannot read its schema ({str(e).splitlines()[0]})") from e
    return {f.name: str(f.type) for f in schema}


def _arrow_rows(batches, src: str) -> Iterator[Row]:
    i = 0
    for batch in batches:
        for rec in batch.to_pylist():
            i += 1
            yield Row(i, rec, src)


def _read_parquet(path: Path, max_row_bytes: int) -> Iterator[Row]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise UserError("reading Parquet needs pyarrow: pip install pyarrow") from e
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError with a useful first line
        raise UserError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from e
    yield from _arrow_rows(pf.iter_batches(batch_size=ARROW_BATCH), str(path))


def _read_hf_folder(path: Path) -> Iterator[Row]:
    """A folder written by `datasets.Dataset.save_to_disk` (or a DatasetDict: one subfolder per split).

    The Arrow files are read with pyarrow batch by batch, so `datasets` itself is optional."""
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
        for name in splits:  # rows of all splits, in the saved order; our own splits are made later
            yield from _read_hf_folder(path / name)
        return
    state = path / "state.json"
    if not state.is_file():
        raise UserError(f"{path} is a folder but not a saved datasets folder (no state.json); pass a file")
    import pyarrow as pa

    files = [path / f["filename"] for f in json.loads(state.read_text()).get("_data_files", [])]

    def batches():
        for f in files:
            with pa.memory_map(str(f)) as source:
                yield from pa.ipc.open_stream(source)

    yield from _arrow_rows(batches(), str(path))


READERS = {".jsonl": _read_jsonl, ".ndjson": _read_jsonl, ".json": _read_json, ".csv": _read_csv,
           ".tsv": _read_csv, ".parquet": _read_parquet}
