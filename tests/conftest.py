"""Shared fixtures: paths from __file__, RecBole isolated from pytest's argv."""

import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SEED_DATA = REPO.parent / "shared" / "seed_data"


@pytest.fixture(autouse=True)
def _isolate(monkeypatch, tmp_path):
    # RecBole's Config parses sys.argv; pytest's own flags must not become config.
    monkeypatch.setattr(sys, "argv", ["pytest"])
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def seed_source():
    """A RawSource reading ../shared/seed_data, never the network."""
    from recbole_cdsr.data.sources import RawSource

    if not SEED_DATA.is_dir():
        raise FileNotFoundError(f"tests need the seed data mirror at {SEED_DATA}")
    return RawSource(mirror=SEED_DATA, allow_download=False)


N_USERS = 60


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory):
    """`tiny`: the first 60 users of ml100k_genre, as a user-supplied dataset."""
    from recbole_cdsr.data.registry import prepare_dataset

    root = tmp_path_factory.mktemp("data")
    prepare_dataset("ml100k_genre", root)
    src = root / "ml100k_genre"
    inter = pd.read_csv(src / "ml100k_genre.inter", sep="\t", dtype=str)
    users = sorted(inter["user_id:token"].unique(), key=int)[:N_USERS]
    inter = inter[inter["user_id:token"].isin(users)]
    items = pd.read_csv(src / "ml100k_genre.item", sep="\t", dtype=str)
    user = pd.read_csv(src / "ml100k_genre.user", sep="\t", dtype=str)
    out = root / "tiny"
    out.mkdir()
    inter.to_csv(out / "tiny.inter", sep="\t", index=False)
    items.to_csv(out / "tiny.item", sep="\t", index=False)
    user[user["user_id:token"].isin(users)].to_csv(out / "tiny.user", sep="\t", index=False)
    return root


def tiny_config(tiny_path, **overrides):
    """A tiny, fast config for the `tiny` dataset (1 epoch, width 8)."""
    config = {
        "data_path": str(tiny_path),
        "load_col": {
            "inter": ["user_id", "item_id", "timestamp"],
            "item": ["item_id", "item_domain"],
            "user": ["user_id", "user_group"],
        },
        "eval_group_fields": ["user_group"],
        "MAX_ITEM_LIST_LENGTH": 10,
        "hidden_size": 8,
        "inner_size": 16,
        "embedding_size": 8,
        "n_layers": 1,
        "n_heads": 1,
        "epochs": 1,
        "train_batch_size": 256,
        "eval_batch_size": 64,
        "show_progress": False,
        "state": "ERROR",
        "checkpoint_dir": "saved",
    }
    config.update(overrides)
    return config


LEARN_USERS = 300  # users in the learning slice (tests/learning.py)


@pytest.fixture(scope="session")
def learn_slice(tiny_path):
    """(root, name): the first LEARN_USERS users of ml100k_genre, for ``test_*learn*``."""
    from learning import make_user_slice

    name = f"ml100k_first{LEARN_USERS}"
    make_user_slice(tiny_path, tiny_path, name, LEARN_USERS)
    return tiny_path, name


@pytest.fixture(scope="session")
def learn_pop(learn_slice):
    """Valid metrics of RecBole's Pop on the learning slice: the floor every model must beat."""
    from learning import popularity

    return popularity(*learn_slice)
