"""User slices of a converted dataset: the documented small versions comparisons run on.

A slice keeps every item of the source (the ranked catalogue is unchanged) and the
interactions of ``n_users`` users: the first in the order of their ids (numeric ids by value),
or, with a ``seed``, a seeded uniform sample. Every atomic file with a ``user_id`` column is
filtered; the others are copied unchanged.

The first users by id are not a sample where ids encode a group: food_kitchen's ``A_*`` users
(food only) sort before its ``B_*`` (kitchen only) and ``O_*`` (both), so its first 3,000 hold
no kitchen target at all. A slice whose training rows lose every target of a domain that the
source trains on is refused (``ValueError`` naming the domain) rather than written.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from recbole_cdsr.data.atomic import write_atomically

logger = logging.getLogger(__name__)

USER_FIELD = "user_id:token"
ITEM_FIELD = "item_id:token"
DOMAIN_FIELD = "item_domain:token"


def _user_key(user: str):
    return (0, int(user), "") if user.isdigit() else (1, 0, user)


def write_user_slice(source: Path, target_root: Path, name: str, n_users: int,
                     seed: int | None = None) -> Path:
    """Writes ``<target_root>/<name>/<name>.<suffix>`` for every ``<source.name>.<suffix>``.

    A dataset with one ``<dataset>.inter`` keeps ``n_users`` users in every file with a
    ``user_id`` column. A benchmark split (``<dataset>.train.inter``, ``.valid.inter``,
    ``.test.inter``) keeps ``n_users`` users *of each split file* (user-level splits have
    disjoint train and test users), and every other file with a ``user_id`` column keeps the
    union of those users.

    Args:
        source: a converted dataset folder ``<data_path>/<dataset>``.
        n_users: how many users to keep per inter file (all of a file with fewer).
        seed: ``None``: the first ``n_users`` by id; an int: a uniform sample without
            replacement, ``numpy.random.default_rng(seed)`` over the users sorted by id.

    Returns:
        The slice folder.

    Raises:
        FileNotFoundError: ``source`` has no ``.inter`` file.
        ValueError: ``n_users`` < 1, or the sliced training rows (``.train.inter`` or the
            single ``.inter``) keep no target of a domain (``item_domain`` of ``.item``) that
            the source's training rows have; nothing is written then.
    """
    source, dataset = Path(source), Path(source).name
    inter_path = source / f"{dataset}.inter"
    split_paths = sorted(source.glob(f"{dataset}.*.inter"))
    if not inter_path.is_file() and not split_paths:
        raise FileNotFoundError(f"{inter_path} is missing")
    if n_users < 1:
        raise ValueError(f"n_users must be >= 1, got {n_users}")
    kept, frames = {}, {}  # inter file -> its kept users, its table
    for path in [inter_path] if inter_path.is_file() else split_paths:
        inter = frames[path] = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        users = sorted(inter[USER_FIELD].unique(), key=_user_key)
        if seed is None or len(users) <= n_users:
            kept[path] = set(users[:n_users])
        else:
            pick = np.random.default_rng(seed).choice(len(users), n_users, replace=False)
            kept[path] = {users[i] for i in pick}
    train_path = inter_path if inter_path.is_file() else source / f"{dataset}.train.inter"
    if train_path in kept:
        _check_domains(source / f"{dataset}.item", frames[train_path], train_path.name,
                       kept[train_path], name)
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
    how = "the first" if seed is None else f"a seed-{seed} sample of"
    logger.info("slice %s: %s %d users of each inter file of %s in %s",
                name, how, n_users, dataset, out)
    return out


def _check_domains(item_path: Path, train: pd.DataFrame, train_name: str, users: set,
                   name: str) -> None:
    """Raises ``ValueError`` if ``users``' rows of ``train`` lose a domain's targets."""
    if not item_path.is_file() or ITEM_FIELD not in train.columns:
        return
    items = pd.read_csv(item_path, sep="\t", dtype=str, keep_default_na=False)
    if DOMAIN_FIELD not in items.columns or ITEM_FIELD not in items.columns:
        return
    domain = dict(zip(items[ITEM_FIELD], items[DOMAIN_FIELD]))
    before = train[ITEM_FIELD].map(domain).value_counts()
    after = train[train[USER_FIELD].isin(users)][ITEM_FIELD].map(domain).value_counts()
    lost = sorted(d for d in before.index if after.get(d, 0) == 0)
    if lost:
        raise ValueError(
            f"slice {name}: the kept users of {train_name} have no training target in "
            f"domain(s) {lost} (the source has {', '.join(f'{d}: {before[d]}' for d in lost)}); "
            f"the first users by id are not a sample of this dataset: pass a seed "
            f"(compare.py --slice_seed) for a uniform sample of users")
