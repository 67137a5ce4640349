"""Learning checks shared by the per-model ``test_*learn*`` tests.

Every model is trained through its own dataset, loaders and trainer (the path a user's run
takes) on one fixed slice, for a fixed number of optimiser steps, and read on validation:

* ``learn(model, root, steps, ...)`` -> best valid result and the per-epoch training loss;
* ``popularity(root)`` -> RecBole's ``Pop`` on the same split (the floor a model must beat);
* ``overfit_hit(model, root, ...)`` -> HR@10 of the model on the *training* targets of the
  slice after training, from the same rows RecBole's SequentialDataset trains SASRec on.

The slice is ``ml100k_genre`` (two domains, drama/other) cut to its first users; targets are
ranked within their domain (the package default protocol).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from recbole_cdsr.config import Config
from recbole_cdsr.data.dataset import CDSRDataset
from recbole_cdsr.data.slice import write_user_slice
from recbole_cdsr.quick_start import build
from recbole_cdsr.utils import get_trainer

METRIC = "mean/hit@10"

# One small transformer size for every model (each model's yaml keeps its paper size).
SMALL = dict(
    MAX_ITEM_LIST_LENGTH=20,
    hidden_size=32,
    inner_size=64,
    embedding_size=32,
    n_layers=2,
    n_heads=2,
    train_batch_size=128,
    eval_batch_size=512,
    show_progress=False,
    state="ERROR",
    metrics=["Hit", "NDCG"],
    topk=[10],
    valid_metric="mean/hit@10",
    stopping_step=1000,
    checkpoint_dir="saved",
    reproducibility=True,
)


def make_user_slice(root, source_root, name: str, n_users: int) -> None:
    """Writes ``<root>/<name>/``: the first ``n_users`` users of ``ml100k_genre``."""
    write_user_slice(source_root / "ml100k_genre", root, name, n_users)


def slice_config(root, **overrides) -> dict:
    config = {
        "data_path": str(root),
        "load_col": {
            "inter": ["user_id", "item_id", "timestamp"],
            "item": ["item_id", "item_domain"],
            "user": ["user_id", "user_group"],
        },
        **SMALL,
    }
    config.update(overrides)
    return config


def _cap(loader, steps_per_epoch: int | None):
    """Makes ``loader`` yield at most ``steps_per_epoch`` batches per epoch (in place)."""
    if steps_per_epoch is None:
        return loader
    base = type(loader)

    def capped_iter(self):
        return itertools.islice(base.__iter__(self), steps_per_epoch)

    loader.__class__ = type(f"Capped{base.__name__}", (base,), {"__iter__": capped_iter})
    return loader


def train(model: str, root, dataset: str, epochs: int, steps_per_epoch: int | None = None,
          seed: int = 2020, **overrides):
    """Trains ``model`` with its own trainer; returns (config, trainer, data, result).

    ``result`` is ``{"valid": best valid metrics, "losses": [epoch loss, ...]}``.
    """
    config = Config(model, dataset, config_dict=slice_config(
        root, epochs=epochs, seed=seed, **overrides))
    _, train_data, valid_data, test_data, net = build(config)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    _cap(train_data, steps_per_epoch)
    _, best = trainer.fit(train_data, valid_data, saved=False, show_progress=False)
    losses = [float(sum(v)) if isinstance(v, tuple) else float(v)
              for _, v in sorted(trainer.train_loss_dict.items())]
    return config, trainer, (train_data, valid_data, test_data), {"valid": best, "losses": losses}


def learn(model: str, root, dataset: str, epochs: int, steps_per_epoch: int | None = None,
          **overrides) -> dict:
    """Best valid metrics and per-epoch losses of ``model`` trained on the slice."""
    return train(model, root, dataset, epochs, steps_per_epoch, **overrides)[3]


def popularity(root, dataset: str) -> dict:
    """Valid metrics of RecBole's ``Pop`` on the same split and protocol."""
    return learn("Pop", root, dataset, epochs=1)["valid"]


def overfit_hit(model: str, root, dataset: str, epochs: int, k: int = 10, **overrides) -> float:
    """HR@k (within the target's domain) on the slice's own training targets after training:
    each user's last training target, read with ``full_sort_predict`` as evaluation reads it.
    """
    with torch.enable_grad():  # training needs autograd; only the read-out is no_grad
        config, trainer, _, _ = train(model, root, dataset, epochs, **overrides)
    return _train_hit(config, trainer.model.eval(), k)


@torch.no_grad()
def _train_hit(config, net, k: int) -> float:
    rows = CDSRDataset(config).build()[0]
    item_domain = rows.item_domain.to(config["device"])
    # Each user's last training row (history = all training items but the last, which is the
    # target): the one row every training scheme fits in the layout evaluation reads
    # (one-row-per-user models train the earlier targets at other absolute positions).
    users = rows.inter_feat[rows.uid_field]
    lengths = rows.inter_feat[rows.item_list_length_field]
    order = torch.from_numpy(np.lexsort((lengths.numpy(), users.numpy())))
    last = torch.ones(len(order), dtype=torch.bool)
    last[:-1] = users[order][1:] != users[order][:-1]
    inter = rows.inter_feat[order[last]]
    hits, n = 0, len(inter)
    for start in range(0, n, 512):
        batch = inter[start:start + 512].to(config["device"])
        scores = net.full_sort_predict(batch).view(len(batch), -1)
        target = batch[rows.iid_field]
        scores[item_domain.unsqueeze(0) != item_domain[target].unsqueeze(1)] = -torch.inf
        scores[:, 0] = -torch.inf
        top = scores.topk(k, dim=1).indices
        hits += int((top == target.unsqueeze(1)).any(1).sum())
    return hits / n
