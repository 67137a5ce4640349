"""LLMCDSR's Amazon pairs (Food-Kitchen, Movie-Book) as RecBole benchmark files.

Source: github.com/xhran2010/LLMCDSR @ 5825e999d87c4b7f90448df17d05c5f9cea047ba,
``data/food-kitchen/`` and ``data/movie-book/`` (mirror prefix ``llmcdsr/``).
Split: the official fixed user-level split (spec llmcdsr.md sections 1, 2 and 7.1):

- train: every prefix (history length >= 1) of every training user (A-only, B-only,
  overlapped-train), so a sequence of n items gives n - 1 rows;
- valid / test: one row per held-out overlapped user, history = the whole sequence
  minus its last item, target = the last item.

Histories are cut to their last ``MAX_HISTORY`` items (the official ``maxlen``).
Raw item ids are 0-based global indices (A: 0..N_A-1, B: N_A..N_A+N_B-1, local B =
global - N_A); they become ``<domain>_<ASIN>`` tokens through ``item_set_{A,B}.pkl``.
``<name>.item`` lists the items in global-index order, and ``<name>.item_index.tsv``
keeps the token -> official global index map so official artefacts can be reused.
Titles (``text_{A,B}.pkl``) go to ``<name>.item_text.jsonl`` as published (HTML
escapes kept), except that runs of TAB/CR/LF are replaced by one space. The LLM
prompt prefixes (``candidate_generate_*_icl.txt``) are not part of the dataset.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from recbole_cdsr.data.atomic import write_atomic
from recbole_cdsr.data.sources import RawFileError

logger = logging.getLogger(__name__)

MAX_HISTORY = 50  # official maxlen; MAX_ITEM_LIST_LENGTH in the dataset yaml
# sequence file -> (user-token prefix, user group; {A}/{B} = the domain tokens)
SEQUENCE_FILES = {
    "train_A.txt": ("A", "{A}_only"),
    "train_B.txt": ("B", "{B}_only"),
    "train_overlap.txt": ("O", "overlap"),
    "valid.txt": ("V", "overlap"),
    "test.txt": ("T", "overlap"),
}
SIDE_FILES = ("num.txt", "instance_num.txt", "item_set_A.pkl", "item_set_B.pkl")
TEXT_FILES = ("text_A.pkl", "text_B.pkl")
_LINE_BREAKS = re.compile(r"[\t\r\n]+")

Fetch = Callable[[str], Path]


def convert_food_kitchen(fetch: Fetch, out_dir: Path) -> dict:
    """Converts LLMCDSR Food-Kitchen (A = Grocery&Food, B = Home&Kitchen).

    Args:
        fetch: returns a verified local path of a raw file relative to the mirror root.
        out_dir: folder receiving ``food_kitchen.*``.

    Returns:
        The stats dict (users, items, interactions, domains, splits, targets, ...).
    """
    folder = "llmcdsr/food-kitchen"
    return _convert(fetch, out_dir, "food_kitchen", folder, "food", "kitchen")


def convert_movie_book(fetch: Fetch, out_dir: Path) -> dict:
    """Converts LLMCDSR Movie-Book (A = Movies, B = Books).

    The public upstream lacks ``train_B.txt`` and ``text_B.pkl`` (over the raw-file
    size limit), so this raises :class:`RawFileError` naming them unless a mirror
    provides them.

    Args:
        fetch: returns a verified local path of a raw file relative to the mirror root.
        out_dir: folder receiving ``movie_book.*``.

    Returns:
        The stats dict, as for :func:`convert_food_kitchen`.
    """
    return _convert(fetch, out_dir, "movie_book", "llmcdsr/movie-book", "movie", "book")


def _fetch_all(fetch: Fetch, folder: str, names: list[str]) -> dict[str, Path]:
    """Fetches every file first, so that one error lists all missing files."""
    paths, errors = {}, []
    for name in names:
        try:
            paths[name] = fetch(f"{folder}/{name}")
        except RawFileError as err:
            errors.append(str(err))
    if errors:
        raise RawFileError(
            f"{len(errors)} raw file(s) of {folder} unavailable:\n  "
            + "\n  ".join(errors)
        )
    return paths


def _read_ints(path: Path, n: int) -> list[int]:
    values = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                values.append(int(line))
            except ValueError:
                raise ValueError(
                    f"{path}:{lineno}: expected an integer, got {line!r}"
                ) from None
    if len(values) != n:
        raise ValueError(f"{path}: expected {n} integers, found {values}")
    return values


def _read_item_set(path: Path, n: int) -> list[str]:
    """Returns the ASINs ordered by their local index, checking the index is dense."""
    with open(path, "rb") as f:
        item_set = pickle.load(f)
    if not isinstance(item_set, dict) or len(item_set) != n:
        raise ValueError(f"{path}: expected a dict of {n} ASIN -> index entries")
    asins = sorted(item_set, key=item_set.__getitem__)
    if [item_set[a] for a in asins] != list(range(n)):
        raise ValueError(f"{path}: indices are not exactly 0..{n - 1}")
    bad = [a for a in asins if not isinstance(a, str) or not a or re.search(r"\s", a)]
    if bad:
        raise ValueError(f"{path}: ASIN {bad[0]!r} is empty or contains whitespace")
    return asins


def _read_sequences(path: Path, n_items: int) -> tuple[list[str], list[np.ndarray]]:
    """Reads ``uid \\t i1,i2,...`` lines into uids and global-index arrays."""
    uids, seqs = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            uid, sep, items = line.partition("\t")
            if not sep or not uid.strip().isdigit():
                raise ValueError(f"{path}:{lineno}: expected 'uid<TAB>i1,i2,...'")
            try:
                seq = np.array(items.split(","), dtype=np.int64)
            except ValueError:
                raise ValueError(
                    f"{path}:{lineno}: item list is not comma-separated integers: "
                    f"{items[:80]!r}"
                ) from None
            if seq.size == 0 or seq.min() < 0 or seq.max() >= n_items:
                raise ValueError(
                    f"{path}:{lineno}: items must be global indices in [0, {n_items}), "
                    f"got min {seq.min()} max {seq.max()}"
                )
            uids.append(uid.strip())
            seqs.append(seq)
    dup = [u for u, c in Counter(uids).items() if c > 1]
    if dup:
        raise ValueError(f"{path}: user id {dup[0]} appears more than once")
    return uids, seqs


def _clean_title(title: object, path: Path, asin: str) -> str:
    if not isinstance(title, str):
        raise ValueError(f"{path}: title of {asin} is {type(title).__name__}, not str")
    return _LINE_BREAKS.sub(" ", title)


def _prefix_rows(
    users: list[str], seqs: list[np.ndarray], item_tokens: np.ndarray
) -> pd.DataFrame:
    """Every (history -> next item) row of each sequence, history cut to MAX_HISTORY."""
    user_col, histories, targets = [], [], []
    for user, seq in zip(users, seqs):
        tokens = item_tokens[seq].tolist()
        histories += [
            tokens[max(0, k - MAX_HISTORY) : k] for k in range(1, len(tokens))
        ]
        user_col += [user] * (len(tokens) - 1)
        targets += tokens[1:]
    return pd.DataFrame(
        {"user_id": user_col, "item_id_list": histories, "item_id": targets}
    )


def _last_rows(
    path: Path, users: list[str], seqs: list[np.ndarray], item_tokens: np.ndarray
) -> pd.DataFrame:
    """One row per user: all but the last item -> the last item."""
    short = [u for u, s in zip(users, seqs) if len(s) < 2]
    if short:
        raise ValueError(f"{path}: held-out user {short[0]} has fewer than 2 items")
    histories = [item_tokens[s[-1 - MAX_HISTORY : -1]].tolist() for s in seqs]
    targets = [item_tokens[s[-1]] for s in seqs]
    return pd.DataFrame(
        {"user_id": users, "item_id_list": histories, "item_id": targets}
    )


def _write_titles(
    out_path: Path, paths: dict[str, Path], asins: dict[str, list[str]], doms: dict
) -> int:
    """Writes the title side file; returns how many titles had line breaks replaced."""
    n_cleaned = 0
    with open(out_path, "w", encoding="utf-8") as out:
        for side in ("A", "B"):
            path = paths[f"text_{side}.pkl"]
            with open(path, "rb") as f:
                titles = pickle.load(f)
            if not isinstance(titles, dict) or set(titles) != set(asins[side]):
                raise ValueError(
                    f"{path}: keys differ from the ASINs of item_set_{side}.pkl"
                )
            for asin in asins[side]:
                title = _clean_title(titles[asin], path, asin)
                n_cleaned += title != titles[asin]
                line = {"item_id": f"{doms[side]}_{asin}", "title": title}
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
    return n_cleaned


def _convert(
    fetch: Fetch, out_dir: Path, name: str, folder: str, dom_a: str, dom_b: str
) -> dict:
    paths = _fetch_all(fetch, folder, [*SEQUENCE_FILES, *SIDE_FILES, *TEXT_FILES])
    n_a, n_b = _read_ints(paths["num.txt"], 2)
    n_items = n_a + n_b
    doms = {"A": dom_a, "B": dom_b}
    asins = {"A": _read_item_set(paths["item_set_A.pkl"], n_a)}
    asins["B"] = _read_item_set(paths["item_set_B.pkl"], n_b)
    # official global index -> token (spec 1.2: B global = local B + N_A)
    item_tokens = np.array([f"{doms[s]}_{a}" for s in "AB" for a in asins[s]])
    item_domain = np.array([dom_a] * n_a + [dom_b] * n_b)

    user_parts, train_parts, frames, file_stats = [], [], {}, {}
    targets = {}
    counts = np.zeros(n_items, dtype=np.int64)
    for file, (prefix, group) in SEQUENCE_FILES.items():
        uids, seqs = _read_sequences(paths[file], n_items)
        users = [f"{prefix}_{u}" for u in uids]
        group = group.format(A=dom_a, B=dom_b)
        user_parts.append(
            pd.DataFrame({"user_id": users, "user_group": [[group]] * len(users)})
        )
        flat = np.concatenate(seqs)
        counts += np.bincount(flat, minlength=n_items)
        file_stats[file] = {
            "users": len(uids),
            "interactions": len(flat),
            dom_a: int((flat < n_a).sum()),
            dom_b: int((flat >= n_a).sum()),
        }
        if file.startswith("train"):
            train_parts.append(_prefix_rows(users, seqs, item_tokens))
        else:
            split = file.removesuffix(".txt")
            frames[split] = _last_rows(paths[file], users, seqs, item_tokens)
            last = np.array([s[-1] for s in seqs])
            targets[split] = {
                dom_a: int((last < n_a).sum()),
                dom_b: int((last >= n_a).sum()),
            }
    frames["train"] = pd.concat(train_parts, ignore_index=True)

    expected = _read_ints(paths["instance_num.txt"], 3)
    found = [file_stats[f]["users"] for f in list(SEQUENCE_FILES)[:3]]
    if found != expected:
        raise ValueError(
            f"{paths['instance_num.txt']}: says {expected} A-only/B-only/overlap "
            f"users, the train files hold {found}"
        )

    columns = {"user_id": "token", "item_id_list": "token_seq", "item_id": "token"}
    splits = {
        split: write_atomic(out_dir / f"{name}.{split}.inter", columns, frames[split])
        for split in ("train", "valid", "test")
    }
    user_frame = pd.concat(user_parts, ignore_index=True)
    write_atomic(
        out_dir / f"{name}.user",
        {"user_id": "token", "user_group": "token_seq"},
        user_frame,
    )
    write_atomic(
        out_dir / f"{name}.item",
        {"item_id": "token", "item_domain": "token"},
        pd.DataFrame({"item_id": item_tokens, "item_domain": item_domain}),
    )
    index_map = pd.DataFrame({"item_id": item_tokens, "official_index": range(n_items)})
    index_map.to_csv(out_dir / f"{name}.item_index.tsv", sep="\t", index=False)
    n_cleaned = _write_titles(out_dir / f"{name}.item_text.jsonl", paths, asins, doms)
    logger.info("%s: replaced TAB/CR/LF runs in %d titles", name, n_cleaned)

    groups = user_frame["user_group"].str[0].value_counts().sort_index()
    return {
        "users": len(user_frame),
        "items": n_items,
        "interactions": int(counts.sum()),
        "domains": {
            dom_a: {"items": n_a, "interactions": int(counts[:n_a].sum())},
            dom_b: {"items": n_b, "interactions": int(counts[n_a:].sum())},
        },
        "splits": splits,
        "targets": targets,
        "user_groups": {g: int(n) for g, n in groups.items()},
        "sequence_files": file_stats,
        "items_never_seen": int((counts == 0).sum()),
        "titles_with_line_breaks_replaced": int(n_cleaned),
        "max_history": MAX_HISTORY,
    }
