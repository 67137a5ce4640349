"""User slices of a converted dataset: the documented small versions comparisons run on.

A slice keeps every item of the source (the ranked catalogue is unchanged) and the
interactions of the first ``n_users`` users in the order of their ids (numeric ids by value).
Every atomic file with a ``user_id`` column is filtered; the others are copied unchanged.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from recbole_cdsr.data.atomic import write_atomically

logger = logging.getLogger(__name__)

USER_FIELD = "user_id:token"


def _user_key(user: str):
    return (0, int(user), "") if user.isdigit() else (1, 0, user)


def write_user_slice(source: Path, target_root: Path, name: str, n_users: int) -> Path:
    """Writes ``<target_root>/<name>/<name>.<suffix>`` for every ``<source.name>.<suffix>``.

    A dataset with one ``<dataset>.inter`` keeps the first ``n_users`` users (by id) in every
    file with a ``user_id`` column. A benchmark split (``<dataset>.train.inter``,
    ``.valid.inter``, ``.test.inter``) keeps the first ``n_users`` users *of each split file*
    (user-level splits have disjoint train and test users), and every other file with a
    ``user_id`` column keeps the union of those users.

    Args:
        source: a converted dataset folder ``<data_path>/<dataset>``.
        n_users: how many users to keep (the first by id).

    Returns:
        The slice folder.

    Raises:
        FileNotFoundError: ``source`` has no ``.inter`` file.
        ValueError: ``n_users`` < 1.
    """
    source, dataset = Path(source), Path(source).name
    inter_path = source / f"{dataset}.inter"
    split_paths = sorted(source.glob(f"{dataset}.*.inter"))
    if not inter_path.is_file() and not split_paths:
        raise FileNotFoundError(f"{inter_path} is missing")
    if n_users < 1:
        raise ValueError(f"n_users must be >= 1, got {n_users}")
    kept = {}  # inter file -> its kept users
    for path in [inter_path] if inter_path.is_file() else split_paths:
        inter = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        kept[path] = set(sorted(inter[USER_FIELD].unique(), key=_user_key)[:n_users])
    every = set().union(*kept.values())
    out = Path(target_root) / name
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob(f"{dataset}.*")):
        suffix = path.name[len(dataset) + 1:]
        header = path.open(encoding="utf-8").readline().rstrip("\n").split("\t")
        text = path.read_text(encoding="utf-8")
        if USER_FIELD in header:
            users = kept.get(path, every)
            table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
            text = table[table[USER_FIELD].isin(users)].to_csv(sep="\t", index=False)
        write_atomically(out / f"{name}.{suffix}", lambda tmp, text=text: tmp.write_text(text))
    logger.info("slice %s: the first %d users of each inter file of %s in %s",
                name, n_users, dataset, out)
    return out
