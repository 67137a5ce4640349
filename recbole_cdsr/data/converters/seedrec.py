"""SeeDRec's Amazon Home and Electronics (single domain, with category sememes).

Source: github.com/hulkima/SeeDRec @ 3060647 (``Datasets/{Home,Electronic}/``), pickles:
``log_file_final.pkl`` (user -> chronological items), ``log_timestep_final.pkl``
(user -> unix seconds at day granularity; Home only, missing upstream for Electronic)
and ``item_categoory_dict.pkl`` (item -> category ids, the "sememes").
Split: leave-one-out per user (spec ``seedrec.md`` §2), done by RecBole's
``LS: valid_and_test``. Atomic layout follows spec §7.1 with two choices:

1. ``timestamp`` is the position in the user's sequence (0, 1, ...), because Home's
   day-granularity times have same-day ties (docs/atomic_format.md asks for a strict
   order); Home keeps the real day (unix time / 86400) in ``day:float``, which
   RecBole turns into ``day_list`` for time-aware weights (spec §1.3).
2. Electronic has no times upstream, so it has only the position ``timestamp``.

Categories go to ``<name>.item`` as ``categories:token_seq`` with the raw category ids,
rebuilt from ``item_categoory_dict.pkl`` for both datasets (spec §0.4). Nothing is
filtered or de-duplicated; item and user ids stay the raw ids (single domain).
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from recbole_cdsr.data.atomic import write_atomic

logger = logging.getLogger(__name__)

SECONDS_PER_DAY = 86400


def _load_pickle(fetch: Callable[[str], Path], rel: str) -> dict:
    with open(fetch(rel), "rb") as f:
        obj = pickle.load(f)  # checksum-verified by fetch
    if not isinstance(obj, dict):
        raise ValueError(f"{rel}: expected a dict, got {type(obj).__name__}")
    return obj


def _flatten(table: dict, rel: str, what: str) -> tuple[np.ndarray, np.ndarray, list]:
    """Returns (sorted keys, list lengths, concatenated values) of a dict of lists."""
    keys = sorted(table)
    bad = next((k for k in keys if not isinstance(table[k], (list, tuple))), None)
    if bad is not None:
        raise ValueError(
            f"{rel}: {what} of key {bad!r} is a {type(table[bad]).__name__}, not a list"
        )
    lengths = np.array([len(table[k]) for k in keys], dtype=np.int64)
    values = [v for k in keys for v in table[k]]
    return np.array(keys, dtype=np.int64), lengths, values


def _convert(
    fetch: Callable[[str], Path], out_dir: Path, name: str, folder: str, with_days: bool
) -> dict:
    log_rel = f"seedrec/{folder}/log_file_final.pkl"
    cat_rel = f"seedrec/{folder}/item_categoory_dict.pkl"
    users, lengths, items = _flatten(_load_pickle(fetch, log_rel), log_rel, "sequence")
    if lengths.min() == 0:
        empty = int(users[np.argmin(lengths)])
        raise ValueError(f"{log_rel}: user {empty} has an empty sequence")
    items = np.array(items, dtype=np.int64)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    frame = pd.DataFrame(
        {
            "user_id": np.repeat(users, lengths),
            "item_id": items,
            "timestamp": np.arange(len(items)) - starts,
        }
    )
    columns = {"user_id": "token", "item_id": "token", "timestamp": "float"}
    if with_days:
        ts_rel = f"seedrec/{folder}/log_timestep_final.pkl"
        ts_users, ts_lengths, times = _flatten(
            _load_pickle(fetch, ts_rel), ts_rel, "timestep list"
        )
        aligned = np.array_equal(ts_users, users)
        if not aligned or not np.array_equal(ts_lengths, lengths):
            raise ValueError(
                f"{ts_rel}: users or sequence lengths differ from {log_rel}; each user "
                f"needs one time per item"
            )
        days = np.array(times, dtype=np.int64) // SECONDS_PER_DAY
        same_user = np.diff(frame["user_id"].to_numpy()) == 0
        step = np.diff(days)[same_user]
        if (step < 0).any():
            n_back = int((step < 0).sum())
            logger.warning("%s: %d time decreases inside sequences", ts_rel, n_back)
        frame["day"] = days
        columns["day"] = "float"
        stats_extra = {
            "timestamps": "position in the sequence; real day (unix/86400) in day",
            "same_day_ties": int((step == 0).sum()),
            "day_decreases": int((step < 0).sum()),
        }
    else:
        stats_extra = {"timestamps": "position (upstream timestamps missing)"}
    n_inter = write_atomic(out_dir / f"{name}.inter", columns, frame)

    categories = _load_pickle(fetch, cat_rel)
    item_ids = np.unique(items)
    missing = [int(i) for i in item_ids if int(i) not in categories]
    if missing:
        raise ValueError(
            f"{cat_rel}: {len(missing)} item(s) of {log_rel} have no categories, "
            f"e.g. item {missing[0]}"
        )
    unused = len(categories) - len(item_ids)
    if unused:
        logger.warning("%s: %d item(s) without interactions left out", cat_rel, unused)
    item_frame = pd.DataFrame(
        {
            "item_id": item_ids,
            "item_domain": name,
            "categories": [list(categories[int(i)]) for i in item_ids],
        }
    )
    write_atomic(
        out_dir / f"{name}.item",
        {"item_id": "token", "item_domain": "token", "categories": "token_seq"},
        item_frame,
    )
    n_cats = len({c for cats in item_frame["categories"] for c in cats})
    repeats = int(frame.duplicated(["user_id", "item_id"]).sum())
    return {
        "users": len(users),
        "items": len(item_ids),
        "interactions": n_inter,
        "domains": {name: {"items": len(item_ids), "interactions": n_inter}},
        "categories": n_cats,
        "categories_per_item_max": int(item_frame["categories"].map(len).max()),
        "items_without_interactions_dropped": unused,
        "repeated_interactions": repeats,
        "sequence_length": {"min": int(lengths.min()), "max": int(lengths.max())},
        **stats_extra,
    }


def convert_home(fetch: Callable[[str], Path], out_dir: Path) -> dict:
    """Amazon Home: ``home.inter`` (with ``day``) and ``home.item`` (categories).

    Args:
        fetch: returns a verified local path of a mirror-relative raw file.
        out_dir: folder receiving the atomic files.

    Returns:
        The stats dict (users, items, interactions, domains, categories, ...).
    """
    return _convert(fetch, out_dir, "home", "Home", with_days=True)


def convert_electronic(fetch: Callable[[str], Path], out_dir: Path) -> dict:
    """Amazon Electronics, position timestamps (no times); see :func:`convert_home`."""
    return _convert(fetch, out_dir, "electronic", "Electronic", with_days=False)
