"""I2VAE's pseudo-sequence generator (PSG): LightGCN + faiss top-k per domain, cached.

Official procedure (specs i2vae.md section 3.14, ``callback.py`` of YennNing/I2VAE and
the LightGCN inputs of WujiangXu/IM-VAE): train LightGCN on the training users' graph,
score every item by the inner product with the user's embedding, and keep the top-k
items of each domain that are not among the user's own items.

Here RecBole's own :class:`~recbole.model.general_recommender.LightGCN` is trained
(BPR, as its own trainer does) on the **training split only**, and the top-k of each
domain is retrieved with faiss (``IndexFlatIP``, on the GPU when faiss and torch both
see one). Differences from the official code:

1. users absent from the graph (valid/test users) get an *inductive* embedding, the mean
   of the final LightGCN embeddings of their history items (users with no history: the
   mean training-user embedding). The official code leaves them at LightGCN's untrained
   initial vector, whose pseudo items are no better than a random user's (spec section
   3.14 item 4). ``psg_unseen_user: random`` restores that;
2. ``psg_use_eval_targets: False`` drops the graph edges from a user to their own valid
   or test targets (the leakage of spec section 6 item 9) and excludes only history
   items from the pseudo lists; ``True`` keeps the edges and, as the official code,
   excludes the targets too (so a pseudo list never equals the target);
3. the graph uses every training row's items (history + target), not the first 80% of
   each list.

The result is written as ``<data_path>/<dataset>.i2vae_psg.<key>.tsv`` (atomic
``user_id:token``, ``psg_x:token_seq``, ``psg_y:token_seq``) plus a ``.json`` with the
settings and timings; ``key`` hashes the built splits (users, targets, histories and
their vocabularies) and every ``psg_*`` key, so a second run reads the file instead of training LightGCN.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from recbole.data.interaction import Interaction
from recbole.model.general_recommender import LightGCN

from recbole_cdsr.data.atomic import require_writable, write_atomically

logger = logging.getLogger(__name__)

PSG_KEYS = (
    "psg_embedding_size",
    "psg_n_layers",
    "psg_reg_weight",
    "psg_learning_rate",
    "psg_epochs",
    "psg_batch_size",
    "psg_seed",
    "psg_unseen_user",
    "psg_use_eval_targets",
    "history_length",
    "history_fields",
)
UNSEEN_USER_CHOICES = ("inductive", "random")


class _GraphData:
    """The two things LightGCN reads from a RecBole dataset: sizes and the user-item matrix."""

    def __init__(self, uid_field: str, iid_field: str, n_users: int, n_items: int, edges):
        self._num = {uid_field: n_users, iid_field: n_items}
        users, items = edges
        self._matrix = sp.coo_matrix(
            (np.ones(len(users), dtype=np.float32), (users, items)), shape=(n_users, n_items)
        )

    def num(self, field: str) -> int:
        return self._num[field]

    def inter_matrix(self, form: str = "coo"):
        return self._matrix.asformat(form)


def check_psg_config(config) -> None:
    """Raises ValueError for a bad ``psg_*`` key (called when the dataset is built)."""
    if config["psg_unseen_user"] not in UNSEEN_USER_CHOICES:
        raise ValueError(
            f"I2VAE: psg_unseen_user must be one of {UNSEEN_USER_CHOICES}, got "
            f"{config['psg_unseen_user']!r}; set it in I2VAE.yaml or --psg_unseen_user="
        )
    for key in ("psg_embedding_size", "psg_n_layers", "psg_epochs", "psg_batch_size"):
        value = config[key]
        if not isinstance(value, int) or value < (0 if key == "psg_epochs" else 1):
            raise ValueError(f"I2VAE: {key} must be a positive int, got {value!r}")


def _sequence_fields(dataset, config) -> list[str]:
    fields = [dataset.item_id_list_field]
    fields += [f for f in (config["history_fields"] or []) if f in dataset.inter_feat]
    return fields


def _pairs(split, fields: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(user, item) pairs of every non-pad item in ``fields`` of ``split``'s rows."""
    users, items = [], []
    uid = split.inter_feat[split.uid_field].numpy()
    for field in fields:
        seq = split.inter_feat[field].numpy().reshape(len(uid), -1)
        keep = seq > 0
        users.append(np.broadcast_to(uid[:, None], seq.shape)[keep])
        items.append(seq[keep])
    return np.concatenate(users), np.concatenate(items)


def _unique_pairs(users, items, n_items: int) -> np.ndarray:
    return np.unique(users.astype(np.int64) * n_items + items.astype(np.int64))


def cache_key(splits: list, config) -> str:
    """Hash of the built splits (users, targets, histories and their vocabularies, so
    any filtering or split setting is covered) and of every PSG setting."""
    train = splits[0]
    digest = hashlib.sha1(train.dataset_name.encode())
    for field in (train.uid_field, train.iid_field):
        digest.update("\x1f".join(map(str, train.field2id_token[field])).encode())
    fields = [train.uid_field, train.iid_field, *_sequence_fields(train, config)]
    for split in splits:
        for field in fields:
            digest.update(np.ascontiguousarray(split.inter_feat[field].numpy()).tobytes())
    settings = {k: config[k] for k in PSG_KEYS}
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def cache_path(splits: list, config) -> Path:
    """``<data_path>/<dataset>.i2vae_psg.<key>.tsv``."""
    folder = Path(config["data_path"])
    return folder / f"{splits[0].dataset_name}.i2vae_psg.{cache_key(splits, config)}.tsv"


def pseudo_sequences(splits: list, config) -> tuple[torch.Tensor, bool]:
    """Pseudo-sequences of every user: computed once, then read from the cache file.

    Args:
        splits: the built ``[train, valid, test]`` datasets (CDSRDataset, two domains).
        config: the run's Config (``psg_*`` keys, ``history_length``, ``history_fields``).

    Returns:
        ``(table, cached)``: LongTensor ``[n_users, 2, history_length]`` of internal item
        ids (row u: user u's pseudo items of domain 0 and 1, best first), and whether it
        came from the cache file.
    """
    check_psg_config(config)
    train = splits[0]
    path = cache_path(splits, config)
    if path.is_file():
        logger.info("I2VAE PSG: reading cached pseudo-sequences %s", path)
        return _read(path, train, config["history_length"]), True
    # Fail now, not after LightGCN has trained, when the cache cannot be written.
    require_writable(path.parent, "I2VAE's pseudo-sequence cache")
    start = time.time()
    table, stats = _compute(splits, config)
    stats["seconds"] = round(time.time() - start, 2)
    _write(path, table, train, config, stats)
    logger.info("I2VAE PSG: wrote %s (%s)", path, json.dumps(stats))
    return table, False


def _compute(splits: list, config) -> tuple[torch.Tensor, dict]:
    train = splits[0]
    n_users, n_items = train.user_num, train.item_num
    item_domain = train.item_domain.numpy()
    fields = _sequence_fields(train, config)
    k = config["history_length"]

    # Graph: every training row's history items and target.
    users, items = _pairs(train, fields)
    users = np.concatenate([users, train.inter_feat[train.uid_field].numpy()])
    items = np.concatenate([items, train.inter_feat[train.iid_field].numpy()])
    edge_keys = _unique_pairs(users, items, n_items)
    # Items each user is known to own: histories of every split, training targets.
    own = [edge_keys]
    eval_targets = []
    for split in splits[1:]:
        own.append(_unique_pairs(*_pairs(split, fields), n_items))
        eval_targets.append(
            _unique_pairs(
                split.inter_feat[split.uid_field].numpy(),
                split.inter_feat[split.iid_field].numpy(),
                n_items,
            )
        )
    eval_targets = np.unique(np.concatenate(eval_targets)) if eval_targets else np.empty(0)
    if config["psg_use_eval_targets"]:
        own.append(eval_targets)
    else:
        edge_keys = edge_keys[~np.isin(edge_keys, eval_targets)]
    own_keys = np.unique(np.concatenate(own))

    device = config["device"]
    user_emb, item_emb = _train_lightgcn(train, config, edge_keys, n_users, n_items, device)

    seen = np.zeros(n_users, dtype=bool)
    seen[edge_keys // n_items] = True
    n_inductive = 0
    if config["psg_unseen_user"] == "inductive":
        # Mean final embedding of the user's own items; no items: the mean seen user.
        own_users = torch.from_numpy(own_keys // n_items)
        own_items = torch.from_numpy(own_keys % n_items)
        sums = torch.zeros_like(user_emb).index_add_(0, own_users, item_emb[own_items])
        counts = torch.bincount(own_users, minlength=n_users).clamp(min=1).unsqueeze(1)
        unseen = torch.from_numpy(~seen)
        seen_rows = user_emb[torch.from_numpy(seen)] if seen.any() else user_emb
        population = seen_rows.mean(0)
        has_items = torch.bincount(own_users, minlength=n_users) > 0
        inductive = torch.where(has_items.unsqueeze(1), sums / counts, population)
        user_emb = torch.where(unseen.unsqueeze(1), inductive, user_emb)
        n_inductive = int(unseen.sum())

    table = np.zeros((n_users, 2, k), dtype=np.int64)
    for domain in (0, 1):
        candidates = np.flatnonzero(item_domain == domain)
        table[:, domain] = _retrieve(user_emb, item_emb, candidates, own_keys, n_items, k)
    table[0] = 0  # the padding user
    stats = {
        "graph_users": int(seen.sum()),
        "graph_edges": int(len(edge_keys)),
        "inductive_users": n_inductive,
        "short_lists": int((table[1:] == 0).any(2).sum()),  # rows with a pad item
    }
    return torch.from_numpy(table), stats


def _train_lightgcn(train, config, edge_keys, n_users, n_items, device):
    """Trains RecBole's LightGCN (BPR) on ``edge_keys``; returns final (user, item) embeddings."""
    lgn_config = {
        "USER_ID_FIELD": train.uid_field,
        "ITEM_ID_FIELD": train.iid_field,
        "NEG_PREFIX": config["NEG_PREFIX"],
        "device": device,
        "embedding_size": config["psg_embedding_size"],
        "n_layers": config["psg_n_layers"],
        "reg_weight": config["psg_reg_weight"],
        "require_pow": False,
    }
    users, items = edge_keys // n_items, edge_keys % n_items
    graph = _GraphData(train.uid_field, train.iid_field, n_users, n_items, (users, items))
    generator = torch.Generator().manual_seed(config["psg_seed"])
    rng_state = torch.get_rng_state()
    torch.manual_seed(config["psg_seed"])  # LightGCN's xavier init
    model = LightGCN(lgn_config, graph).to(device)
    torch.set_rng_state(rng_state)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["psg_learning_rate"])
    users, items = torch.from_numpy(users), torch.from_numpy(items)
    neg_field = config["NEG_PREFIX"] + train.iid_field
    batch = config["psg_batch_size"]
    model.train()
    for epoch in range(config["psg_epochs"]):
        order = torch.randperm(len(users), generator=generator)
        total = 0.0
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            negatives = torch.randint(1, n_items, (len(idx),), generator=generator)
            interaction = Interaction(
                {train.uid_field: users[idx], train.iid_field: items[idx], neg_field: negatives}
            ).to(device)
            loss = model.calculate_loss(interaction)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        logger.debug("I2VAE PSG: LightGCN epoch %d loss %.4f", epoch, total)
    model.eval()
    with torch.no_grad():
        user_emb, item_emb = model.forward()
    return user_emb.float().cpu(), item_emb.float().cpu()


def _faiss_index(dim: int):
    import faiss

    index = faiss.IndexFlatIP(dim)
    if torch.cuda.is_available() and hasattr(faiss, "StandardGpuResources"):
        if faiss.get_num_gpus() > 0:
            return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    return index


def _retrieve(user_emb, item_emb, candidates, own_keys, n_items, k) -> np.ndarray:
    """Top-k of ``candidates`` per user by inner product, skipping the user's own items."""
    n_users = len(user_emb)
    if len(candidates) == 0:
        return np.zeros((n_users, k), dtype=np.int64)
    own_users = own_keys // n_items
    in_domain = np.isin(own_keys % n_items, candidates)
    max_own = int(np.bincount(own_users[in_domain], minlength=n_users).max(initial=0))
    depth = min(len(candidates), k + max_own)
    index = _faiss_index(item_emb.shape[1])
    index.add(np.ascontiguousarray(item_emb[torch.from_numpy(candidates)].numpy()))
    _, local = index.search(np.ascontiguousarray(user_emb.numpy()), depth)
    found = candidates[np.clip(local, 0, None)]
    keys = np.arange(n_users)[:, None] * n_items + found
    valid = (local >= 0) & ~np.isin(keys, own_keys[in_domain])
    # Stable compaction: the first k valid hits of each row, in rank order.
    order = np.argsort(~valid, axis=1, kind="stable")[:, :k]
    picked = np.take_along_axis(found, order, axis=1)
    picked[~np.take_along_axis(valid, order, axis=1)] = 0
    if picked.shape[1] < k:
        picked = np.pad(picked, ((0, 0), (0, k - picked.shape[1])))
    return picked


def _write(path: Path, table: torch.Tensor, dataset, config, stats: dict) -> None:
    users = dataset.id2token(dataset.uid_field, np.arange(1, len(table)))
    tokens = dataset.field2id_token[dataset.iid_field]
    columns = {"user_id:token": users}
    for domain, name in enumerate(("psg_x", "psg_y")):
        ids = table[1:, domain].numpy()
        columns[f"{name}:token_seq"] = [" ".join(tokens[row[row > 0]]) for row in ids]
    write_atomically(path, lambda tmp: pd.DataFrame(columns).to_csv(tmp, sep="\t", index=False))
    meta = {"settings": {k: config[k] for k in PSG_KEYS}, "stats": stats}
    text = json.dumps(meta, indent=1, default=str)
    write_atomically(path.with_suffix(".json"), lambda tmp: tmp.write_text(text))


def _read(path: Path, dataset, k: int) -> torch.Tensor:
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    user_ids = dataset.token2id(dataset.uid_field, frame["user_id:token"].to_numpy())
    vocab = dataset.field2token_id[dataset.iid_field]
    table = np.zeros((dataset.user_num, 2, k), dtype=np.int64)
    for domain, name in enumerate(("psg_x", "psg_y")):
        for row, cell in zip(user_ids, frame[f"{name}:token_seq"]):
            ids = [vocab[t] for t in cell.split()][:k]
            table[row, domain, : len(ids)] = ids
    return torch.from_numpy(table)
