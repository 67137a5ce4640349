"""I2VAE's Amazon pairs (Cloth-Sport, Phone-Elec, Game-Video) as benchmark files.

Sources (mirror prefix ``i2vae/``):

- train rows: github.com/WujiangXu/IM-VAE @ a9ec2faf7b0a5e10146899d276e47e36c15b6098,
  ``dataset/<ds>_train.csv`` (the official ``*_train_updated.csv`` with pseudo-sequences
  is over the public raw-file limit; these are the same rows without ``corr_*``);
- test rows: github.com/YennNing/I2VAE @ b665961968f07d459bff51b7037cdfb79d542fe6,
  ``dataset/<ds>_test_csu_updated.csv`` for cloth_sport and game_video, and IM-VAE's
  file of that name for phone_elec (I2VAE's lacks the ``corr_*`` columns).

Layout: "faithful layout B" of docs/specs i2vae.md section 7.2. One raw CSV row is one
(user, target domain) example and becomes one benchmark row; the target is the last
item of the target-domain list (section 1). Split: the official 80/20 row split of
section 2 (train CSV / test CSV); the official code has no validation set, so
``VALID_FRACTION`` of the train-CSV rows per target domain (seeded) become valid.

Domain X (``domain_id`` 0, ``seq_d1``) is the first registry domain, Y the second. Raw
ids live in one joint id space; they become ``<domain>_<id>`` tokens, so an id seen in
both domains is two items. Each row holds:

- ``item_id_list``: the other domain's full list, then the target-domain history (the
  list without its last item and any repeat of it), cut to its last ``MAX_HISTORY``
  items. The data has no timestamps; this order puts target-domain items last;
- ``hist_x`` / ``hist_y``: the per-domain histories of section 3.1 (the target's own
  domain loses the target), each cut to its last ``MAX_HISTORY`` items;
- ``row_group``: ``cold`` (empty target-domain history), ``tail`` (target-domain length,
  target included, <= tail_len, the official rule computed per CSV and domain; cold rows
  are tailed), ``overlap`` or ``single`` (both raw lists non-empty or not), and
  ``nohist`` (no history in either domain: the cold-start construction bug of
  section 2).

The test CSV's LightGCN pseudo-sequences (``corr_d1``/``corr_d2``) go to the side file
``<name>.test_psg.tsv`` (one row per test user), not into the ``.inter`` files: the
public train rows have none, and RecBole concatenates the three benchmark files, so
train/valid rows would carry empty pseudo-sequences that a model could not tell from
real ones.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from recbole_cdsr.data.atomic import write_atomic
from recbole_cdsr.data.registry import dataset_info

logger = logging.getLogger(__name__)

Fetch = Callable[[str], Path]

MAX_HISTORY = 50  # MAX_ITEM_LIST_LENGTH in the dataset yaml
VALID_FRACTION = 0.1
VALID_SEED = 2020
TRAIN_FILE = "i2vae/{ds}_train.csv"
TEST_FILE = "i2vae/{ds}_test_csu_updated.csv"
# official CSV column -> our name (X = d1, Y = d2)
_CSV_LISTS = {
    "seq_d1": "seq_x",
    "seq_d2": "seq_y",
    "corr_d1": "psg_x",
    "corr_d2": "psg_y",
}
INTER_COLUMNS = {
    "user_id": "token",
    "item_id_list": "token_seq",
    "item_id": "token",
    "hist_x": "token_seq",
    "hist_y": "token_seq",
    "row_group": "token_seq",
}


def convert_cloth_sport(fetch: Fetch, out_dir: Path) -> dict:
    """Converts I2VAE Cloth-Sport (X = Clothing, Y = Sports).

    Args:
        fetch: returns a verified local path of a raw file relative to the mirror root.
        out_dir: folder for the ``cloth_sport.*`` atomic files.

    Returns:
        The stats dict (see :func:`_convert`).
    """
    return _convert("cloth_sport", fetch, out_dir)


def convert_phone_elec(fetch: Fetch, out_dir: Path) -> dict:
    """Converts I2VAE Phone-Elec (X = Cell Phones, Y = Electronics); see above."""
    return _convert("phone_elec", fetch, out_dir)


def convert_game_video(fetch: Fetch, out_dir: Path) -> dict:
    """Converts I2VAE Game-Video (X = Video Games, Y = Video); see above."""
    return _convert("game_video", fetch, out_dir)


def _parse_id_list(cell: object, where: str) -> list[int]:
    try:
        value = json.loads(cell)
    except (TypeError, ValueError):
        value = None
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise ValueError(f"{where} is not a JSON list of item ids: {cell!r}")
    return value


def _read_csv(path: Path, psg: bool) -> pd.DataFrame:
    """Reads an official CSV into columns user, domain, seq_x, seq_y[, psg_x, psg_y]."""
    fields = ["user_id", "seq_d1", "seq_d2", "domain_id"]
    fields += ["corr_d1", "corr_d2"] if psg else []
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [f for f in fields if f not in raw.columns]
    if missing:
        raise ValueError(
            f"{path.name}: column(s) {missing} missing; header has {list(raw.columns)}"
        )
    lines = np.arange(len(raw)) + 2  # 1-based, after the header
    for field in ("user_id", "domain_id"):
        bad = ~raw[field].str.fullmatch(r"\d+")
        if field == "domain_id":
            bad |= ~raw[field].isin(["0", "1"])
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(
                f"{path.name}:{lines[row]}: {field} must be "
                f"{'0 or 1' if field == 'domain_id' else 'an integer'}, "
                f"got {raw[field].iloc[row]!r}"
            )
    frame = pd.DataFrame(
        {
            "user": raw["user_id"].astype(np.int64),
            "domain": raw["domain_id"].astype(np.int64),
        }
    )
    for field in [f for f in fields if f in _CSV_LISTS]:
        frame[_CSV_LISTS[field]] = [
            _parse_id_list(cell, f"{path.name}:{line}: {field}")
            for cell, line in zip(raw[field].tolist(), lines)
        ]
    target_len = np.where(
        frame["domain"] == 0, frame["seq_x"].map(len), frame["seq_y"].map(len)
    )
    if (target_len == 0).any():
        row = int(np.flatnonzero(target_len == 0)[0])
        raise ValueError(
            f"{path.name}:{lines[row]}: the target-domain list (domain_id "
            f"{frame['domain'].iloc[row]}) is empty, so the row has no target"
        )
    frame["line"] = lines
    frame["target_len"] = target_len
    return frame


def _tail_len(seqs: pd.Series) -> int:
    """Official rule: int(mean length of the shortest 80% of lists longer than 2)."""
    lengths = np.sort(seqs.map(len).to_numpy())[::-1]
    lengths = lengths[lengths > 2]
    return int(lengths[int(len(lengths) * 0.2) :].mean())


def _rows(
    frame: pd.DataFrame, tokens: tuple[str, str], tails: tuple[int, int]
) -> dict:
    """Builds the benchmark columns of every CSV row (in ``frame``'s order).

    Also returns ``n_history`` (history length before the cut) and ``repeats`` (per
    row, repeats of the target removed from its history; none in the public files).
    """
    tok_x, tok_y = tokens
    out = {name: [] for name in [*INTER_COLUMNS, "n_history", "repeats"]}
    columns = ("user", "domain", "seq_x", "seq_y", "target_len")
    for user, dom, seq_x, seq_y, tlen in zip(*(frame[c] for c in columns)):
        own, other = (seq_x, seq_y) if dom == 0 else (seq_y, seq_x)
        own_tok, other_tok = (tok_x, tok_y) if dom == 0 else (tok_y, tok_x)
        target = own[-1]
        history = [i for i in own[:-1] if i != target]
        out["repeats"].append(len(own) - 1 - len(history))
        own_hist = [f"{own_tok}_{i}" for i in history]
        other_hist = [f"{other_tok}_{i}" for i in other]
        hist_x, hist_y = (own_hist, other_hist) if dom == 0 else (other_hist, own_hist)
        groups = ["cold"] if not history else []
        groups += ["tail"] if tlen <= tails[dom] else []
        groups += ["overlap"] if seq_x and seq_y else ["single"]
        groups += ["nohist"] if not history and not other else []
        out["user_id"].append(str(user))
        out["item_id"].append(f"{own_tok}_{target}")
        out["item_id_list"].append((other_hist + own_hist)[-MAX_HISTORY:])
        out["n_history"].append(len(other_hist) + len(own_hist))
        out["hist_x"].append(hist_x[-MAX_HISTORY:])
        out["hist_y"].append(hist_y[-MAX_HISTORY:])
        out["row_group"].append(groups)
    return out


def _valid_mask(domain: np.ndarray) -> np.ndarray:
    """Seeded VALID_FRACTION of the rows of each target domain (half rounded up)."""
    rng = np.random.default_rng(VALID_SEED)
    mask = np.zeros(len(domain), dtype=bool)
    for dom in (0, 1):
        rows = np.flatnonzero(domain == dom)
        size = int(np.floor(VALID_FRACTION * len(rows) + 0.5))
        mask[rng.choice(rows, size=size, replace=False)] = True
    return mask


def _group_counts(part: pd.DataFrame, tokens: tuple[str, str]) -> dict:
    counts = {}
    for dom, tok in enumerate(tokens):
        groups = part.loc[part["domain"] == dom, "row_group"]
        counts[tok] = {
            g: int(groups.map(lambda gs, g=g: g in gs).sum())
            for g in ("cold", "tail", "overlap", "single", "nohist")
        }
    return counts


def _psg_frame(test: pd.DataFrame, tokens: tuple[str, str], name: str) -> pd.DataFrame:
    """One row per test user; raises if a user's two rows disagree (they are merged)."""
    frame = test[["user", "psg_x", "psg_y"]].copy()
    for col in ("psg_x", "psg_y"):
        frame[col] = frame[col].map(tuple)
    distinct = frame.drop_duplicates()
    if distinct["user"].duplicated().any():
        user = int(distinct.loc[distinct["user"].duplicated(), "user"].iloc[0])
        raise ValueError(
            f"{name}: user {user} has different corr_d1/corr_d2 lists in its test "
            f"rows; the official files merge them on user_id, so they must agree"
        )
    distinct = distinct.sort_values("user")
    return pd.DataFrame(
        {
            "user_id": distinct["user"].astype(str).to_numpy(),
            "psg_x": [[f"{tokens[0]}_{i}" for i in s] for s in distinct["psg_x"]],
            "psg_y": [[f"{tokens[1]}_{i}" for i in s] for s in distinct["psg_y"]],
        }
    )


def _convert(name: str, fetch: Fetch, out_dir: Path) -> dict:
    """Reads ``<name>``'s train and test CSVs and writes the benchmark files.

    Writes ``<name>.item`` (``item_id``, ``item_domain``), ``<name>.{train,valid,test}
    .inter`` (columns ``INTER_COLUMNS``, rows sorted by user id then target domain) and
    ``<name>.test_psg.tsv`` (``user_id``, ``psg_x``, ``psg_y``).

    Returns:
        Stats: ``users`` (distinct users over both CSVs), ``items``, ``interactions``
        (benchmark rows), per-domain ``items`` and ``interactions`` (rows targeting
        the domain), ``splits``, ``targets`` per split and domain, ``tail_len`` and
        ``groups`` per CSV/split and domain, ``shared_raw_ids`` (ids in both domains),
        ``truncated_histories`` (rows whose item_id_list was cut),
        ``target_repeats_removed`` per CSV and ``test_psg_users``.
    """
    tokens = dataset_info(name).domains
    if len(tokens) != 2:
        raise ValueError(f"{name}: I2VAE datasets have two domains, registry {tokens}")
    train_csv = _read_csv(fetch(TRAIN_FILE.format(ds=name)), psg=False)
    test_csv = _read_csv(fetch(TEST_FILE.format(ds=name)), psg=True)

    items = {}
    for dom, tok in enumerate(tokens):
        col = "seq_x" if dom == 0 else "seq_y"
        ids = set()
        for seqs in (train_csv[col], test_csv[col]):
            ids.update(i for seq in seqs for i in seq)
        items[tok] = sorted(ids)
        psg_ids = {i for seq in test_csv[col.replace("seq", "psg")] for i in seq}
        if not psg_ids <= ids:
            raise ValueError(
                f"{name}: corr_d{dom + 1} holds {len(psg_ids - ids)} ids never seen in "
                f"seq_d{dom + 1}, e.g. {sorted(psg_ids - ids)[:3]}; they would have no "
                f"domain"
            )
    item_frame = pd.DataFrame(
        {
            "item_id": [f"{tok}_{i}" for tok in tokens for i in items[tok]],
            "item_domain": [tok for tok in tokens for _ in items[tok]],
        }
    )
    write_atomic(
        out_dir / f"{name}.item",
        {"item_id": "token", "item_domain": "token"},
        item_frame,
    )

    stats_tail, parts, repeats = {}, {}, {}
    for csv_name, frame in (("train_csv", train_csv), ("test_csv", test_csv)):
        frame = frame.sort_values(["user", "domain", "line"], kind="stable")
        frame = frame.reset_index(drop=True)
        tails = (_tail_len(frame["seq_x"]), _tail_len(frame["seq_y"]))
        stats_tail[csv_name] = dict(zip(tokens, tails))
        built = pd.DataFrame(_rows(frame, tokens, tails))
        repeats[csv_name] = int(built["repeats"].sum())
        if repeats[csv_name]:
            logger.warning(
                "%s: removed %d repeats of targets from their histories",
                csv_name,
                repeats[csv_name],
            )
        built["domain"] = frame["domain"].to_numpy()
        if csv_name == "train_csv":
            valid = _valid_mask(frame["domain"].to_numpy())
            parts["train"], parts["valid"] = built[~valid], built[valid]
        else:
            parts["test"] = built

    for split, part in parts.items():
        write_atomic(out_dir / f"{name}.{split}.inter", INTER_COLUMNS, part)
    write_atomic(
        out_dir / f"{name}.test_psg.tsv",
        {"user_id": "token", "psg_x": "token_seq", "psg_y": "token_seq"},
        _psg_frame(test_csv, tokens, name),
    )

    n_rows = sum(len(p) for p in parts.values())
    targets = {
        split: {tok: int((p["domain"] == d).sum()) for d, tok in enumerate(tokens)}
        for split, p in parts.items()
    }
    stats = {
        "users": int(pd.concat([train_csv["user"], test_csv["user"]]).nunique()),
        "items": len(item_frame),
        "interactions": n_rows,
        "domains": {
            tok: {
                "items": len(items[tok]),
                "interactions": sum(t[tok] for t in targets.values()),
            }
            for tok in tokens
        },
        "splits": {split: len(p) for split, p in parts.items()},
        "targets": targets,
        "tail_len": stats_tail,
        "groups": {split: _group_counts(p, tokens) for split, p in parts.items()},
        "shared_raw_ids": len(set(items[tokens[0]]) & set(items[tokens[1]])),
        "truncated_histories": {
            split: int((p["n_history"] > MAX_HISTORY).sum())
            for split, p in parts.items()
        },
        "target_repeats_removed": repeats,
        "test_psg_users": int(test_csv["user"].nunique()),
    }
    logger.info("%s: %s", name, json.dumps(stats["splits"]))
    return stats
