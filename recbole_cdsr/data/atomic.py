"""Writing and checking RecBole atomic files.

An atomic file is tab-separated with a header of ``name:type`` cells, type one of
``token``, ``token_seq``, ``float``, ``float_seq``; sequence cells are space-separated.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

FIELD_TYPES = ("token", "token_seq", "float", "float_seq")


class AtomicFileError(ValueError):
    """A malformed atomic file; the message names the file, line and field."""


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


def read_header(path: Path) -> dict[str, str]:
    """Returns ``{field: type}`` from an atomic file's header, checking its syntax."""
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
    fields = {}
    for cell in header:
        name, sep, ftype = cell.partition(":")
        if not sep or not name or ftype not in FIELD_TYPES:
            raise AtomicFileError(
                f"{path}:1: header cell {cell!r} is not 'name:type' with type one of "
                f"{FIELD_TYPES}"
            )
        fields[name] = ftype
    return fields


def check_atomic_file(path: Path, required: Iterable[str] = ()) -> dict[str, str]:
    """Checks an atomic file before RecBole reads it.

    Every line must have as many tab-separated cells as the header, ``float`` cells
    must parse, and every field in ``required`` must be in the header.

    Returns:
        The header as ``{field: type}``.

    Raises:
        AtomicFileError: naming the file, the 1-based line and the field.
    """
    fields = read_header(path)
    missing = [f for f in required if f not in fields]
    if missing:
        raise AtomicFileError(
            f"{path}: field(s) {missing} are required (load_col or the model) but the "
            f"header has only {list(fields)}"
        )
    names = list(fields)
    float_cols = [i for i, n in enumerate(names) if fields[n] == "float"]
    with open(path, encoding="utf-8") as f:
        next(f)
        for lineno, line in enumerate(f, start=2):
            cells = line.rstrip("\n").split("\t")
            if len(cells) != len(names):
                raise AtomicFileError(
                    f"{path}:{lineno}: {len(cells)} tab-separated cells, header has "
                    f"{len(names)} ({', '.join(names)})"
                )
            for i in float_cols:
                cell = cells[i]
                if cell:
                    try:
                        float(cell)
                    except ValueError:
                        raise AtomicFileError(
                            f"{path}:{lineno}: field {names[i]} is float but holds "
                            f"{cell!r}"
                        ) from None
    return fields
