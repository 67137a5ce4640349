"""Writing and checking RecBole atomic files.

An atomic file has a header of ``name:type`` cells, type one of ``token``,
``token_seq``, ``float``, ``float_seq``. Cells are separated by RecBole's
``field_separator`` (default tab), sequence elements by ``seq_separator`` (default
space). :func:`check_atomic_file` enforces every rule listed in docs/atomic_format.md,
so that RecBole never fills, drops or re-reads a cell differently from what was written.
"""

from __future__ import annotations

import codecs
import csv
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
from pandas._libs.parsers import STR_NA_VALUES

logger = logging.getLogger(__name__)

FIELD_TYPES = ("token", "token_seq", "float", "float_seq")
# Cells pandas reads as missing (RecBole does not pass keep_default_na=False).
NA_STRINGS = frozenset(STR_NA_VALUES)
# What pandas' float parser reads as a finite number.
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


class AtomicFileError(ValueError):
    """A malformed atomic file; the message names the file, line and field."""


@dataclass(frozen=True)
class AtomicFormat:
    """How RecBole splits an atomic file (its ``field_separator``, ``seq_separator``
    and ``encoding`` config keys)."""

    field_sep: str = "\t"
    seq_sep: str = " "
    encoding: str = "utf-8"

    @classmethod
    def from_config(cls, config) -> "AtomicFormat":
        return cls(
            config["field_separator"] or "\t",
            config["seq_separator"] or " ",
            config["encoding"] or "utf-8",
        )

    def name(self, sep: str) -> str:
        return {"\t": "tab", " ": "space"}.get(sep, repr(sep))


TAB = AtomicFormat()


def _seq_cell(values) -> str:
    return " ".join(str(v) for v in values)


def write_atomic(path: Path, columns: dict[str, str], frame: pd.DataFrame) -> int:
    """Writes ``frame`` as an atomic file.

    Args:
        path: output file.
        columns: ``{column: type}`` in output order; types from FIELD_TYPES.
            ``*_seq`` columns hold lists (or arrays) in ``frame``.
        frame: the rows; token cells must not contain whitespace.

    Returns:
        The number of rows written.
    """
    out = pd.DataFrame(index=frame.index)
    for name, ftype in columns.items():
        if ftype not in FIELD_TYPES:
            raise ValueError(f"{path.name}: column {name} has unknown type {ftype!r}")
        col = frame[name]
        if ftype.endswith("_seq"):
            out[name] = col.map(_seq_cell)
        else:
            out[name] = col.astype(str)
        if ftype.startswith("token"):
            bad = out[name].str.contains(r"[\t\n\r]", regex=True) | (
                (ftype == "token") & out[name].str.contains(" ", regex=False)
            )
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise ValueError(
                    f"{path.name}: {name} value {out[name].iloc[row]!r} (row {row}) "
                    f"contains whitespace, which atomic files cannot hold"
                )
    path.parent.mkdir(parents=True, exist_ok=True)
    out.columns = [f"{n}:{t}" for n, t in columns.items()]
    out.to_csv(path, sep="\t", index=False, quoting=csv.QUOTE_NONE, escapechar=None)
    return len(out)


def _decode(path: Path, fmt: AtomicFormat) -> list[str]:
    """The file's lines (universal newlines, as RecBole's text-mode reads see them)."""
    data = Path(path).read_bytes()
    if not data:
        raise AtomicFileError(f"{path}: the file is empty; line 1 must be the header")
    if data.startswith(codecs.BOM_UTF8) and codecs.lookup(fmt.encoding).name == "utf-8":
        raise AtomicFileError(
            f"{path}:1: the file starts with a UTF-8 BOM (byte-order mark, bytes EF BB BF); "
            f"RecBole would read the first field as '\\ufeff...'. Save it as UTF-8 without "
            f"BOM, or set encoding: utf-8-sig"
        )
    try:
        text = data.decode(fmt.encoding)
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1)
        raise AtomicFileError(
            f"{path}:{line}: byte {data[err.start:err.start + 1]!r} at byte offset "
            f"{err.start} (column {column}) is not valid {fmt.encoding}; re-encode the "
            f"file as {fmt.encoding} or set the encoding config key to its encoding"
        ) from None
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def _parse_header(path: Path, line: str, fmt: AtomicFormat) -> dict[str, str]:
    fields = {}
    for cell in line.split(fmt.field_sep):
        name, sep, ftype = cell.partition(":")
        if not sep or not name or ftype not in FIELD_TYPES:
            hint = ""
            if fmt.field_sep not in line and any(s in line for s in ("\t", ",", ";", " ")):
                hint = (f"; the header has no {fmt.name(fmt.field_sep)} separator: set "
                        f"field_separator to the one the file uses")
            raise AtomicFileError(
                f"{path}:1: header cell {cell!r} is not 'name:type' with type one of "
                f"{FIELD_TYPES}{hint}"
            )
        if name in fields:
            raise AtomicFileError(f"{path}:1: field {name!r} appears twice in the header")
        fields[name] = ftype
    return fields


def read_header(path: Path, fmt: AtomicFormat = TAB) -> dict[str, str]:
    """Returns ``{field: type}`` from an atomic file's header, checking its syntax."""
    return _parse_header(path, _decode(path, fmt)[0], fmt)


def _cell_error(ftype: str, cell: str, fmt: AtomicFormat) -> str | None:
    """Why RecBole would not read ``cell`` as written, or None."""
    if cell.startswith('"'):
        return (f"{cell!r} starts with a double quote, which RecBole's CSV reader takes "
                f"as quoting; remove the quote")
    if ftype == "token":
        if cell == "":
            return ("is empty; RecBole would drop the row (user/item id) or read the cell "
                    "as padding. Write a value, or leave the field out of load_col")
        if cell in NA_STRINGS:
            return (f"{cell!r} is read as missing by RecBole's reader (pandas NA "
                    f"strings); rename the token")
    elif ftype == "float":
        if cell == "":
            return ("is empty; RecBole would fill it with the column mean. Write a value, "
                    "or leave the field out of load_col")
        if not _FLOAT.fullmatch(cell):
            return f"is float but holds {cell!r}, not a finite decimal number"
    elif ftype == "token_seq":
        if cell in NA_STRINGS and cell != "":
            return (f"{cell!r} is read as missing by RecBole's reader, so the sequence "
                    f"would be empty; rename the token")
    elif ftype == "float_seq":
        for value in filter(None, cell.split(fmt.seq_sep)):
            if not _FLOAT.fullmatch(value):
                return f"is float_seq but holds {value!r}, not a finite decimal number"
    return None


def check_atomic_file(
    path: Path,
    required: Iterable[str] = (),
    fmt: AtomicFormat = TAB,
    loaded: Iterable[str] | None = None,
) -> dict[str, str]:
    """Checks an atomic file before RecBole reads it (rules: docs/atomic_format.md).

    Args:
        path: the file.
        required: fields that must be in the header (load_col, the model).
        fmt: separators and encoding RecBole will use.
        loaded: the fields RecBole will load (None: all); only their cells are checked
            for values RecBole would fill or re-read.

    Returns:
        The header as ``{field: type}``.

    Raises:
        AtomicFileError: naming the file, the 1-based line (and byte offset for an
            encoding error), the field and the value.
    """
    lines = _decode(path, fmt)
    fields = _parse_header(path, lines[0], fmt)
    missing = [f for f in required if f not in fields]
    if missing:
        raise AtomicFileError(
            f"{path}: field(s) {missing} are required (load_col or the model) but the "
            f"header has only {list(fields)}"
        )
    if len(lines) == 1:
        raise AtomicFileError(f"{path}: the file has a header but no data rows")
    names = list(fields)
    loaded = set(names if loaded is None else loaded)
    checked = [(i, n, fields[n]) for i, n in enumerate(names) if n in loaded]
    sep, width = fmt.field_sep, len(names)
    for lineno, line in enumerate(lines[1:], start=2):
        if line == "":
            raise AtomicFileError(
                f"{path}:{lineno}: blank line; RecBole skips it silently. Remove it")
        cells = line.split(sep)
        if len(cells) != width:
            raise AtomicFileError(
                f"{path}:{lineno}: {len(cells)} {fmt.name(sep)}-separated cells, header "
                f"has {width} ({', '.join(names)})"
            )
        for i, name, ftype in checked:
            problem = _cell_error(ftype, cells[i], fmt)
            if problem:
                raise AtomicFileError(f"{path}:{lineno}: field {name} {problem}")
    return fields


def token_values(path: Path, field: str, fmt: AtomicFormat = TAB) -> set[str]:
    """The distinct cells of column ``field`` (of a file :func:`check_atomic_file` passed)."""
    lines = _decode(path, fmt)
    index = list(_parse_header(path, lines[0], fmt)).index(field)
    return {line.split(fmt.field_sep)[index] for line in lines[1:]}


def check_no_padding(path: Path, field: str, fmt: AtomicFormat = TAB) -> None:
    """Refuses a ``0`` token in history column ``field`` when ``0`` is no item.

    Histories are lists of real items; a ``0`` written as padding would be remapped to
    a real item (RecBole's padding is its own ``[PAD]`` token, never ``0``).

    Raises:
        AtomicFileError: naming the file, the line and the history.
    """
    lines = _decode(path, fmt)
    index = list(_parse_header(path, lines[0], fmt)).index(field)
    for lineno, line in enumerate(lines[1:], start=2):
        cell = line.split(fmt.field_sep)[index]
        if "0" in cell and "0" in cell.split(fmt.seq_sep):
            raise AtomicFileError(
                f"{path}:{lineno}: field {field} holds the token '0' ({cell!r}) but no item "
                f"is named '0': padding would become a real item. Write only the real "
                f"items, oldest first, without padding"
            )


def require_writable(folder: Path, purpose: str) -> None:
    """Fails fast, before an expensive stage, when ``folder`` cannot take a new file.

    Raises:
        PermissionError: naming the folder, the purpose and the fix.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe-")
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise PermissionError(
            f"{purpose} is written to {folder}, which is not writable ({err}); make it "
            f"writable, or copy the dataset to a writable --data_path"
        ) from err


def write_atomically(path: Path, write: Callable[[Path], None]) -> Path:
    """Calls ``write(tmp)`` on a private temporary file beside ``path`` (same suffix),
    then renames it onto ``path``, so readers see the old file or the whole new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
