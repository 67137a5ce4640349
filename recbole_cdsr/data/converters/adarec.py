"""ADARec's four single-domain benchmarks (Beauty, Sports, Toys, Yelp) as atomic files.

Source: github.com/ZhaoChao52/ADARec @ 90faad2 (``data/``), the ICLRec/ELCRec files:
one line per user, ``user item item ...`` in chronological order, integer ids.
Split: leave-one-out per user (spec ``adarec.md`` §2), done by RecBole's
``LS: valid_and_test``; the converter writes one ``<name>.inter`` with
``timestamp`` = position of the item in the user's line (0, 1, ...), so the TO order
is the file order (spec §1). Nothing is filtered or de-duplicated (Yelp keeps its
11,830 repeats). Single domain: no ``.item`` file, item ids stay the raw ids.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from recbole_cdsr.data.atomic import write_atomic

logger = logging.getLogger(__name__)

_INT_LINE = re.compile(r"[0-9]+(?:[ \t]+[0-9]+)*")
_INT_TOKEN = re.compile(r"[0-9]+")

INTER_COLUMNS = {"user_id": "token", "item_id": "token", "timestamp": "float"}


def read_user_lines(path: Path, rel: str) -> tuple[np.ndarray, list[np.ndarray], int]:
    """Parses a ``user item item ...`` file.

    Args:
        path: local file.
        rel: its name in messages (mirror-relative path).

    Returns:
        ``(user ids, item-id arrays in file order, number of blank lines skipped)``.

    Raises:
        ValueError: naming ``rel:line`` for a non-integer token, a user without
            items or a user id seen twice.
    """
    users, seqs, blank, first_line = [], [], 0, {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            text = line.strip()
            if not text:
                blank += 1
                continue
            if not _INT_LINE.fullmatch(text):
                tokens = text.split()
                bad = [not _INT_TOKEN.fullmatch(t) for t in tokens]
                pos = bad.index(True)
                field = "user id" if pos == 0 else f"item {pos}"
                raise ValueError(
                    f"{rel}:{lineno}: {field} {tokens[pos]!r} is not a non-negative "
                    f"integer; lines must be 'user item item ...' with integer ids"
                )
            ids = np.array(text.split(), dtype=np.int64)
            if len(ids) < 2:
                raise ValueError(f"{rel}:{lineno}: user {ids[0]} has no items")
            user = int(ids[0])
            if user in first_line:
                raise ValueError(
                    f"{rel}:{lineno}: user id {user} already used on line "
                    f"{first_line[user]}; each user must have exactly one line"
                )
            first_line[user] = lineno
            users.append(user)
            seqs.append(ids[1:])
    return np.array(users, dtype=np.int64), seqs, blank


def _convert(fetch: Callable[[str], Path], out_dir: Path, name: str, rel: str) -> dict:
    users, seqs, blank = read_user_lines(fetch(rel), rel)
    if blank:
        logger.info("%s: skipped %d blank line(s)", rel, blank)
    order = np.argsort(users, kind="stable")
    lengths = np.array([len(seqs[k]) for k in order], dtype=np.int64)
    items = np.concatenate([seqs[k] for k in order])
    # position of each interaction inside its user's sequence: 0, 1, ..., n-1
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    frame = pd.DataFrame(
        {
            "user_id": np.repeat(users[order], lengths),
            "item_id": items,
            "timestamp": np.arange(len(items)) - starts,
        }
    )
    n_inter = write_atomic(out_dir / f"{name}.inter", INTER_COLUMNS, frame)
    n_items = int(frame["item_id"].nunique())
    repeats = int(frame.duplicated(["user_id", "item_id"]).sum())
    return {
        "users": len(users),
        "items": n_items,
        "interactions": n_inter,
        "domains": {name: {"items": n_items, "interactions": n_inter}},
        "blank_lines_skipped": blank,
        "repeated_interactions": repeats,
        "max_item_id": int(items.max()),
        "sequence_length": {
            "min": int(lengths.min()),
            "median": float(np.median(lengths)),
            "max": int(lengths.max()),
        },
        "timestamps": "position in the user's line (0..n-1)",
    }


def convert_beauty(fetch: Callable[[str], Path], out_dir: Path) -> dict:
    """Amazon Beauty 5-core (``adarec/Beauty``, no extension, trailing blank line).

    Args:
        fetch: returns a verified local path of a mirror-relative raw file.
        out_dir: folder receiving ``beauty.inter``.

    Returns:
        The stats dict (users, items, interactions, domains, ...).
    """
    return _convert(fetch, out_dir, "beauty", "adarec/Beauty")


def convert_sports(fetch: Callable[[str], Path], out_dir: Path) -> dict:
    """Amazon Sports_and_Outdoors 5-core; see :func:`convert_beauty`."""
    return _convert(fetch, out_dir, "sports", "adarec/Sports_and_Outdoors.txt")


def convert_toys(fetch: Callable[[str], Path], out_dir: Path) -> dict:
    """Amazon Toys_and_Games 5-core; see :func:`convert_beauty`."""
    return _convert(fetch, out_dir, "toys", "adarec/Toys_and_Games.txt")


def convert_yelp(fetch: Callable[[str], Path], out_dir: Path) -> dict:
    """Yelp, repeated items kept; see :func:`convert_beauty`."""
    return _convert(fetch, out_dir, "yelp", "adarec/Yelp.txt")
