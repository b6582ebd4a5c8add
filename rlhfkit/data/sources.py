"""Where rows come from: files (JSON Lines, JSON, Parquet, CSV), ``datasets`` folders and names, lists.

Every reader yields ``(where, object)`` pairs; ``where`` is how a problem sentence locates the row:

- JSON Lines, JSON, CSV: ``FILE line N`` (1-based, as editors count; for JSON, the line where the object
  starts; for CSV, the line where the record starts);
- Parquet, a ``datasets`` folder or name, a ``datasets.Dataset``, a list: ``NAME row N`` (0-based, as in
  ``dataset[N]``).

A path is read by its suffix (``.parquet``, ``.csv``, ``.json``; anything else as JSON Lines, after a look
at the first bytes: a Parquet file is read as Parquet whatever its name, and a file that is one JSON array
as JSON). A folder is a ``datasets`` ``save_to_disk`` folder, or anything ``datasets.load_dataset`` reads
(a folder of data files, a loading script). A string that is neither a path nor an existing file is given
to ``datasets.load_dataset`` as a dataset name (``name`` or ``owner/name``, whose ``owner`` is not a local
folder) — offline, for a dataset already in the local ``datasets`` cache (set ``HF_HUB_OFFLINE=1`` where
there is no network, or ``datasets`` retries the Hub for ~30 s first). ``SOURCE[split]`` picks a split
(default ``train``, or the only one).

The standard library reads JSON Lines, JSON and CSV; ``pyarrow`` and ``datasets`` are imported only for
the sources that need them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.errors import UserError

# A path with one of these suffixes is a file: missing, it is "not found", never a dataset name.
FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".csv", ".txt")
_SPLIT = re.compile(r"^(?P<source>.+)\[(?P<split>[\w.-]+)\]$")


class SourceError(UserError):
    """A source that cannot be opened at all; ``sentence`` says why, naming it."""

    def __init__(self, sentence: str, display: str):
        self.sentence = sentence
        self.display = display
        super().__init__(sentence)


@dataclass(frozen=True)
class Unreadable:
    """A record that is not a value (bad UTF-8, bad JSON); ``sentence`` says why."""

    sentence: str


@dataclass
class Opened:
    display: str  # the name problem sentences use
    records: Iterator[tuple[str, Any]]  # (where, object or Unreadable)
    columns: list[str] | None = None  # a table's columns, checked once for the whole source
    n_blank_lines: int = 0


def open_source(source: Any, name: str | None = None) -> Opened:
    """Open ``source`` (a path, a ``datasets`` name, a ``datasets.Dataset`` or a list of dicts)."""
    if isinstance(source, str | os.PathLike):
        return _open_path(os.fspath(source), name)
    if isinstance(source, list | tuple):
        display = name or "<list>"
        return Opened(display, ((f"{display} row {i}", obj) for i, obj in enumerate(source)))
    if hasattr(source, "column_names") and hasattr(source, "__getitem__"):
        return open_dataset(source, dataset_display(source, name))
    raise TypeError(
        f"cannot read {type(source).__name__} as rows; pass a path (JSON Lines, JSON, Parquet, CSV, a "
        "datasets folder), a datasets name, a datasets.Dataset or a list of dicts"
    )


def _open_path(text: str, name: str | None) -> Opened:
    split = None
    match = _SPLIT.match(text)
    if match and not os.path.exists(text):
        text, split = match["source"], match["split"]
    display = name or (text if split is None else f"{text}[{split}]")
    path = Path(text)
    if path.is_dir():
        return open_dataset(_load_folder(path, split, display), display)
    if path.exists():
        if split is not None:
            raise SourceError(f"{display}: a split ([{split}]) applies to a datasets folder or name, "
                              "not to a file.", display)
        return _open_file(path, display)
    if not _could_be_dataset_name(text):
        raise SourceError(f"{display}: file not found.", display)
    return open_dataset(_load_named(text, split, display), display)


def _could_be_dataset_name(text: str) -> bool:
    """``name`` or ``owner/name`` as on the Hub — unless it has a data file's suffix or its first part is a
    local folder (then it is a mistyped path, and waiting for the Hub would only delay the error)."""
    parts = text.split("/")
    if Path(text).suffix.lower() in FILE_SUFFIXES or len(parts) > 2 or not all(parts):
        return False
    return len(parts) == 1 or not Path(parts[0]).is_dir()


def _open_file(path: Path, display: str) -> Opened:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(path, display)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"{display}: cannot be read ({exc.strerror or exc}).", display) from None
    if data[:4] == b"PAR1":  # Parquet's magic number, whatever the file is called
        return _read_parquet(path, display)
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark, as some editors write
        data = data[3:]
    if suffix == ".csv":
        return _read_csv(data, display)
    if data.lstrip()[:1] == b"[" and (suffix == ".json" or _is_json_array(data)):
        return _read_json_array(data, display)
    return _read_jsonl(data, display)


def _read_jsonl(data: bytes, display: str) -> Opened:
    """Parse every line; undecodable lines become :class:`Unreadable` so all are reported at once."""
    records: list[tuple[str, Any]] = []
    n_blank = 0
    for number, raw in enumerate(data.split(b"\n"), start=1):
        where = f"{display} line {number}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            byte = raw[exc.start : exc.start + 1].hex()
            records.append((where, Unreadable(
                f"{where}: invalid UTF-8 (byte 0x{byte} at position {exc.start + 1} of the line).")))
            continue
        if not text.strip():
            n_blank += 1
            continue
        try:
            records.append((where, json.loads(text)))
        except json.JSONDecodeError as exc:
            records.append((where, Unreadable(f"{where}: invalid JSON ({exc.msg} at column {exc.colno}).")))
        except RecursionError:
            records.append((where, Unreadable(f"{where}: invalid JSON (nested too deeply).")))
    if data.endswith(b"\n"):  # the final newline does not open a blank line
        n_blank -= 1
    return Opened(display, iter(records), n_blank_lines=n_blank)


def _is_json_array(data: bytes) -> bool:
    try:
        return isinstance(json.loads(data), list)
    except (ValueError, RecursionError):
        return False


def _decode(data: bytes, display: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        byte = data[exc.start : exc.start + 1].hex()
        raise SourceError(f"{display} line {line}: invalid UTF-8 (byte 0x{byte}).", display) from None


def _read_json_array(data: bytes, display: str) -> Opened:
    """A JSON array of row objects; each row is located by the line its object starts on."""
    text = _decode(data, display)
    decoder = json.JSONDecoder()
    records: list[tuple[str, Any]] = []

    def line_of(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    def skip(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    pos = skip(0) + 1  # past "["
    pos = skip(pos)
    if pos < len(text) and text[pos] == "]":
        return Opened(display, iter(records))
    while True:
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise SourceError(f"{display} line {exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno}).",
                              display) from None
        except RecursionError:
            raise SourceError(f"{display} line {line_of(pos)}: invalid JSON (nested too deeply).", display) from None
        records.append((f"{display} line {line_of(pos)}", obj))
        pos = skip(end)
        if pos < len(text) and text[pos] == ",":
            pos = skip(pos + 1)
            continue
        if pos < len(text) and text[pos] == "]" and not text[skip(pos + 1):].strip():
            return Opened(display, iter(records))
        raise SourceError(f"{display} line {line_of(pos)}: invalid JSON (expected ',' or ']' between rows).",
                          display)


def _read_csv(data: bytes, display: str) -> Opened:
    """CSV with a header row; every value is a string (an empty cell is empty text)."""
    text = _decode(data, display)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return Opened(display, iter(()), columns=[])
    except csv.Error as exc:
        raise SourceError(f"{display} line 1: invalid CSV ({exc}).", display) from None
    records: list[tuple[str, Any]] = []
    start = reader.line_num + 1
    n_blank = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            records.append((f"{display} line {start}", Unreadable(f"{display} line {start}: invalid CSV ({exc}).")))
            start = reader.line_num + 1
            continue
        where = f"{display} line {start}"
        start = reader.line_num + 1
        if not cells:  # a blank line; a line of empty cells ("" or ",") is a row, and its empty text is reported
            n_blank += 1
            continue
        if len(cells) != len(header):
            records.append((where, Unreadable(
                f"{where}: {len(cells)} values for the {len(header)} columns of the header.")))
            continue
        records.append((where, dict(zip(header, cells))))
    return Opened(display, iter(records), columns=list(header), n_blank_lines=n_blank)


def _read_parquet(path: Path, display: str) -> Opened:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow comes with datasets
        raise SourceError(f"{display}: reading Parquet needs pyarrow (pip install pyarrow).", display) from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise SourceError(f"{display}: not a readable Parquet file ({str(exc).splitlines()[0]}).", display) from None
    rows = table.to_pylist()
    return Opened(display, ((f"{display} row {i}", obj) for i, obj in enumerate(rows)),
                  columns=list(table.column_names))


def _pick_split(dataset: Any, split: str | None, display: str) -> Any:
    """One split of a ``DatasetDict``: the one asked for, else ``train``, else the only one."""
    if not isinstance(getattr(dataset, "column_names", None), dict):
        if split is not None and getattr(dataset, "split", None) not in (None, split):
            raise SourceError(f"{display}: holds one split, not {split!r}.", display)
        return dataset
    splits = list(dataset.keys())
    choice = split or ("train" if "train" in splits else splits[0] if len(splits) == 1 else None)
    if choice not in splits:
        names = ", ".join(splits)
        raise SourceError(f"{display}: choose a split by writing SOURCE[split] (its splits: {names}).", display)
    return dataset[choice]


def _load_folder(path: Path, split: str | None, display: str) -> Any:
    """A ``save_to_disk`` folder (a Dataset or a DatasetDict), else whatever ``load_dataset`` reads there."""
    import datasets

    try:
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            return _pick_split(datasets.load_from_disk(str(path)), split, display)
        return datasets.load_dataset(str(path), split=split or "train")
    except SourceError:
        raise
    except Exception as exc:  # datasets raises many types; the first line says what went wrong
        raise SourceError(f"{display}: a folder that datasets cannot load ({_first_line(exc)}); give a "
                          "save_to_disk folder, a folder of data files or a file.", display) from None


def _load_named(name: str, split: str | None, display: str) -> Any:
    import datasets

    try:
        return datasets.load_dataset(name, split=split or "train")
    except Exception as exc:
        raise SourceError(f"{display}: no such file or folder, and datasets cannot load it as a dataset "
                          f"name ({_first_line(exc)}).", display) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def dataset_display(dataset: Any, name: str | None) -> str:
    if isinstance(getattr(dataset, "column_names", None), dict):
        splits = ", ".join(dataset.column_names)
        raise TypeError(f"got a DatasetDict with splits {splits}; pass one split, e.g. ds['train']")
    if name is None:
        info = getattr(dataset, "info", None)
        name = getattr(info, "dataset_name", None) or getattr(info, "builder_name", None)
        split = getattr(dataset, "split", None)
        if name and split:
            name = f"{name}[{split}]"
    return f'dataset "{name}"' if name else "dataset"


def open_dataset(dataset: Any, display: str) -> Opened:
    rows = iter(dataset) if hasattr(dataset, "__iter__") else (dataset[i] for i in range(len(dataset)))
    return Opened(display, ((f"{display} row {i}", obj) for i, obj in enumerate(rows)),
                  columns=list(dataset.column_names))
