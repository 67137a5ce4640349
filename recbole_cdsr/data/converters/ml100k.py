"""``ml100k_genre``: the offline default dataset, MovieLens-100K split into two domains.

Source: the ML-100K atomic files shipped inside the installed ``recbole`` package
(``recbole/dataset_example/ml-100k/ml-100k.{inter,item}``, RecBole 1.2.1); no raw file
is fetched. An item whose genre list (``class:token_seq``) contains ``Drama`` is in
domain ``drama``, every other item in ``other``; item tokens are ``drama_<id>`` /
``other_<id>``. Every rating is kept as an implicit interaction with its real
timestamp. Split: leave-one-out per user (RecBole ``LS: valid_and_test``); the
registry entry, not a paper, defines it. Rows are sorted by (user, timestamp) with a
stable sort and RecBole's own sort is stable too, so same-second ties keep the order of
``ml-100k.inter``. ``<name>.user`` groups users by the domains they touch (``both``,
``drama_only``, ``other_only``); titles go to ``<name>.item_text.jsonl``.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from recbole_cdsr.data.atomic import write_atomic

logger = logging.getLogger(__name__)

NAME = "ml100k_genre"
DRAMA, OTHER = "drama", "other"
DRAMA_GENRE = "Drama"  # genre token in ml-100k.item class:token_seq


def ml100k_dir() -> Path:
    """Returns the folder of the ML-100K example files inside the recbole package."""
    import recbole

    return Path(recbole.__file__).parent / "dataset_example" / "ml-100k"


def _read(path: Path, needed: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; ml100k_genre needs the ML-100K example files that "
            f"recbole 1.2.1 ships (reinstall recbole)"
        )
    frame = pd.read_csv(
        path, sep="\t", dtype=str, quoting=csv.QUOTE_NONE, keep_default_na=False
    )
    frame.columns = [c.split(":")[0] for c in frame.columns]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{path}: columns {missing} missing; header: {list(frame.columns)}"
        )
    return frame


def _ints(col: pd.Series, path: Path, field: str) -> np.ndarray:
    values = pd.to_numeric(col, errors="coerce")
    if values.isna().any():
        row = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise ValueError(f"{path}:{row + 2}: {field} {col.iloc[row]!r} is not a number")
    return values.to_numpy(dtype=np.int64)


TINY_USERS = 100  # ml100k_tiny: the users with the 100 smallest ids


def convert_ml100k_genre(fetch: Callable[[str], Path], out_dir: Path) -> dict:
    """Writes ``ml100k_genre.{inter,item,user,item_text.jsonl}`` from recbole's ML-100K.

    Args:
        fetch: unused (the source ships with recbole); kept for the converter API.
        out_dir: folder receiving the atomic files.

    Returns:
        The stats dict with per-domain items/interactions and user-group sizes.
    """
    return _convert(out_dir, NAME, max_users=None)


def convert_ml100k_tiny(fetch: Callable[[str], Path], out_dir: Path) -> dict:
    """``ml100k_tiny``: ml100k_genre restricted to its first 100 users (all items kept),
    for smoke tests and the CI benchmark grid."""
    return _convert(out_dir, "ml100k_tiny", max_users=TINY_USERS)


def _convert(out_dir: Path, name: str, max_users: int | None) -> dict:
    src = ml100k_dir()
    inter_path, item_path = src / "ml-100k.inter", src / "ml-100k.item"
    inter = _read(inter_path, ["user_id", "item_id", "timestamp"])
    item = _read(item_path, ["item_id", "movie_title", "class"])
    if item["item_id"].duplicated().any():
        raise ValueError(f"{item_path}: item_id values are not unique")

    raw_item = _ints(item["item_id"], item_path, "item_id")
    is_drama = item["class"].str.split().map(lambda genres: DRAMA_GENRE in genres)
    domain = pd.Series(np.where(is_drama.to_numpy(), DRAMA, OTHER), index=item.index)
    token = domain + "_" + item["item_id"]
    token_of = dict(zip(item["item_id"], token))
    domain_of = dict(zip(item["item_id"], domain))
    unknown = ~inter["item_id"].isin(token_of.keys())
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise ValueError(
            f"{inter_path}:{row + 2}: item_id {inter['item_id'].iloc[row]!r} is not in "
            f"{item_path.name}"
        )

    user = _ints(inter["user_id"], inter_path, "user_id")
    if max_users is not None:
        keep = user <= np.sort(np.unique(user))[max_users - 1]
        inter, user = inter[keep], user[keep]
    stamp = _ints(inter["timestamp"], inter_path, "timestamp")
    order = np.lexsort((stamp, user))  # stable: ties keep the file order
    rows = pd.DataFrame(
        {
            "user_id": user[order],
            "item_id": inter["item_id"].to_numpy()[order],
            "timestamp": stamp[order],
        }
    )
    rows["item_domain"] = rows["item_id"].map(domain_of)
    rows["item_id"] = rows["item_id"].map(token_of)
    n_inter = write_atomic(
        out_dir / f"{name}.inter",
        {"user_id": "token", "item_id": "token", "timestamp": "float"},
        rows,
    )

    item_order = np.argsort(raw_item, kind="stable")
    items = pd.DataFrame(
        {
            "item_id": token.to_numpy()[item_order],
            "item_domain": domain.to_numpy()[item_order],
            "title": item["movie_title"].to_numpy()[item_order],
        }
    )
    write_atomic(
        out_dir / f"{name}.item", {"item_id": "token", "item_domain": "token"}, items
    )
    with open(out_dir / f"{name}.item_text.jsonl", "w", encoding="utf-8") as f:
        for item_token, title in zip(items["item_id"], items["title"]):
            record = {"item_id": item_token, "title": title}
            f.write(json.dumps(record, ensure_ascii=False))
            f.write("\n")

    seen = rows.groupby("user_id")["item_domain"].agg(lambda d: sorted(set(d)))
    groups = seen.map(lambda d: "both" if len(d) == 2 else f"{d[0]}_only")
    users = pd.DataFrame(
        {"user_id": seen.index, "user_group": groups.map(lambda g: [g])}
    )
    write_atomic(
        out_dir / f"{name}.user", {"user_id": "token", "user_group": "token_seq"}, users
    )

    interacted = rows.drop_duplicates("item_id")["item_domain"].value_counts()
    per_domain = rows["item_domain"].value_counts()
    ties = int(rows.duplicated(["user_id", "timestamp"]).sum())
    return {
        "users": len(users),
        "items": int(rows["item_id"].nunique()),
        "interactions": n_inter,
        "domains": {
            d: {
                "items": int(interacted.get(d, 0)),
                "interactions": int(per_domain.get(d, 0)),
            }
            for d in (DRAMA, OTHER)
        },
        "user_groups": {g: int(n) for g, n in sorted(groups.value_counts().items())},
        "timestamp_ties": ties,
        "source": "recbole/dataset_example/ml-100k (no fetch)",
    }
