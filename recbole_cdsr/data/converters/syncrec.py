"""SyNCRec's 500-user Amazon sample (5 domains) as a RecBole leave-one-out dataset.

Source: github.com/cpark88/SyNCRec @ 2292eef3da4d33434d4f4e7f37938d0e40aa120f,
``src/dataset/raw/amazon_seq.txt`` (mirror path ``syncrec/amazon_seq.txt``).
Split: leave-one-out per user in sequence order (RecBole ``LS: valid_and_test``)
(spec syncrec.md sections 2 and 7).

Each row of ``amazon_seq.txt`` is one user with comma-joined, equally long ``item``,
``type`` and ``unix_time`` lists in time order. 56% of consecutive pairs share their
day-granularity ``unix_time``, so the file's order defines the sequence and the
``timestamp`` written here is the position in the user's sequence (0..n-1); the
Unix time is not written (RecBole would carry it as a second time-like field, and
float32 cannot hold Unix seconds plus a tie-breaking epsilon). Items are
``<domain>_<ASIN>`` tokens; every ASIN must belong to exactly one domain. Nothing is
filtered and repeat interactions are kept.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from recbole_cdsr.data.atomic import write_atomic

logger = logging.getLogger(__name__)

SEQ_FILE = "syncrec/amazon_seq.txt"
# Amazon top-level category (the official "type") -> registry domain token
DOMAINS = {
    "Books": "books",
    "Clothing_Shoes_and_Jewelry": "clothing",
    "Toys_and_Games": "toys",
    "Sports_and_Outdoors": "sports",
    "Video_Games": "videogames",
}
LIST_COLUMNS = ("item", "type", "unix_time")


def _split_lists(path: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """Explodes the per-user lists into one row per interaction, checking lengths."""
    split = {c: frame[c].str.split(",") for c in LIST_COLUMNS}
    lengths = {c: split[c].str.len() for c in LIST_COLUMNS}
    declared = pd.to_numeric(frame["list_len"], errors="coerce")
    for col in (*LIST_COLUMNS[1:], "list_len"):
        other = declared if col == "list_len" else lengths[col]
        bad = np.flatnonzero((lengths["item"] != other).to_numpy())
        if bad.size:
            row = int(bad[0])
            raise ValueError(
                f"{path}:{row + 2}: field {col} gives length {other.iloc[row]}, "
                f"item has {lengths['item'].iloc[row]} entries"
            )
    inter = pd.DataFrame(
        {
            "user": np.repeat(frame["user_id"].to_numpy(), lengths["item"]),
            "line": np.repeat(np.arange(2, len(frame) + 2), lengths["item"]),
            **{c: np.concatenate(split[c].to_list()) for c in LIST_COLUMNS},
        }
    )
    inter["position"] = inter.groupby("line", sort=False).cumcount()
    return inter


def _check_fields(path: Path, inter: pd.DataFrame) -> None:
    unknown = ~inter["type"].isin(DOMAINS)
    if unknown.any():
        row = inter[unknown].iloc[0]
        raise ValueError(
            f"{path}:{row['line']}: field type holds {row['type']!r}; known domains "
            f"are {sorted(DOMAINS)}"
        )
    bad_item = inter["item"].str.len().eq(0) | inter["item"].str.contains(r"\s")
    if bad_item.any():
        row = inter[bad_item].iloc[0]
        raise ValueError(f"{path}:{row['line']}: field item holds {row['item']!r}")
    bad_time = pd.to_numeric(inter["unix_time"], errors="coerce").isna()
    if bad_time.any():
        row = inter[bad_time].iloc[0]
        raise ValueError(
            f"{path}:{row['line']}: field unix_time holds {row['unix_time']!r}"
        )
    domains_per_item = inter.groupby("item")["type"].nunique()
    multi = domains_per_item[domains_per_item > 1]
    if len(multi):
        asin = multi.index[0]
        types = sorted(inter.loc[inter["item"] == asin, "type"].unique())
        raise ValueError(
            f"{path}: item {asin} appears under several domains {types} "
            f"({len(multi)} such items); SyNCRec needs one domain per item"
        )


def convert_amazon5(fetch: Callable[[str], Path], out_dir: Path) -> dict:
    """Converts ``amazon_seq.txt`` into ``amazon5.inter`` and ``amazon5.item``.

    Args:
        fetch: returns a verified local path of a raw file relative to the mirror root.
        out_dir: folder receiving ``amazon5.*``.

    Returns:
        The stats dict (users, items, interactions, domains, last-item domains, ...).
    """
    path = fetch(SEQ_FILE)
    frame = pd.read_csv(path, sep="\t", index_col=0, dtype=str, keep_default_na=False)
    missing = [c for c in ("user_id", "list_len", *LIST_COLUMNS) if c not in frame]
    if missing:
        raise ValueError(f"{path}: header lacks column(s) {missing}")
    dup = frame["user_id"][frame["user_id"].duplicated()]
    if len(dup):
        raise ValueError(f"{path}: user_id {dup.iloc[0]} has more than one row")
    inter = _split_lists(path, frame)
    _check_fields(path, inter)

    inter["domain"] = inter["type"].map(DOMAINS)
    inter["item_id"] = inter["domain"] + "_" + inter["item"]
    inter = inter.rename(columns={"user": "user_id", "position": "timestamp"})
    inter = inter.sort_values(["user_id", "timestamp"], ignore_index=True)
    write_atomic(
        out_dir / "amazon5.inter",
        {"user_id": "token", "item_id": "token", "timestamp": "float"},
        inter,
    )
    items = inter.drop_duplicates("item_id")[["item_id", "domain"]]
    items = items.sort_values("item_id", ignore_index=True)
    items = items.rename(columns={"domain": "item_domain"})
    write_atomic(
        out_dir / "amazon5.item", {"item_id": "token", "item_domain": "token"}, items
    )

    last = inter.groupby("user_id", sort=False).tail(2)
    is_last = last.groupby("user_id", sort=False).cumcount(ascending=False) == 0
    order = list(DOMAINS.values())

    def _per_domain(values: pd.Series) -> dict:
        counts = values.value_counts()
        return {d: int(counts.get(d, 0)) for d in order}

    item_counts = _per_domain(items["item_domain"])
    inter_counts = _per_domain(inter["domain"])
    unix = pd.to_numeric(inter["unix_time"])
    same_time = (unix.diff() == 0) & (inter["user_id"] == inter["user_id"].shift())
    return {
        "users": int(frame.shape[0]),
        "items": len(items),
        "interactions": len(inter),
        "domains": {
            d: {"items": item_counts[d], "interactions": inter_counts[d]} for d in order
        },
        "last_item_domain": _per_domain(last.loc[is_last, "domain"]),
        "second_last_item_domain": _per_domain(last.loc[~is_last, "domain"]),
        "repeat_interactions": int(inter.duplicated(["user_id", "item_id"]).sum()),
        "consecutive_same_unix_time": int(same_time.sum()),
        "sequence_length": {
            "min": int(frame["list_len"].astype(int).min()),
            "max": int(frame["list_len"].astype(int).max()),
        },
    }
