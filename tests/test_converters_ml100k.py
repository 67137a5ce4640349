"""ml100k_genre: recbole's MovieLens-100K split into drama / other domains."""

import json
import time

import pandas as pd
import pytest

from recbole_cdsr.data.registry import prepare_dataset

NAME = "ml100k_genre"


@pytest.fixture(scope="module")
def converted(tmp_path_factory, seed_source):
    root = tmp_path_factory.mktemp("ml100k_atomic")
    start = time.perf_counter()
    stats = prepare_dataset(NAME, root, seed_source)
    return root, stats, time.perf_counter() - start


def _read(root, ext):
    return pd.read_csv(root / NAME / f"{NAME}.{ext}", sep="\t", dtype=str)


def test_stats(converted):
    _, stats, seconds = converted
    assert seconds < 5
    counts = (stats["users"], stats["items"], stats["interactions"])
    assert counts == (943, 1682, 100000)
    assert stats["domains"] == {
        "drama": {"items": 725, "interactions": 39895},
        "other": {"items": 957, "interactions": 60105},
    }
    assert stats["user_groups"] == {"both": 943}


def test_rows(converted):
    root, _, _ = converted
    inter = _read(root, "inter")
    assert list(inter.columns) == ["user_id:token", "item_id:token", "timestamp:float"]
    # user 1 rated items 168 (Comedy) and 172 (... Drama ...) in the same second;
    # the tie keeps the order of ml-100k.inter
    assert inter.head(2).values.tolist() == [
        ["1", "other_168", "874965478"],
        ["1", "drama_172", "874965478"],
    ]
    users, stamps = inter["user_id:token"], inter["timestamp:float"]
    keys = list(zip(users.astype(int), stamps.astype(int)))
    assert keys == sorted(keys)
    item = _read(root, "item")
    assert list(item.columns) == ["item_id:token", "item_domain:token"]
    # item 4 Get Shorty: Action Comedy Drama; item 3 Four Rooms: Thriller
    assert item.iloc[2:4].values.tolist() == [
        ["other_3", "other"],
        ["drama_4", "drama"],
    ]
    prefix = item["item_id:token"].str.split("_").str[0]
    assert (prefix == item["item_domain:token"]).all()
    user = _read(root, "user")
    assert list(user.columns) == ["user_id:token", "user_group:token_seq"]
    assert len(user) == 943 and set(user["user_group:token_seq"]) == {"both"}
    lines = (root / NAME / f"{NAME}.item_text.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"item_id": "other_1", "title": "Toy Story"}
    assert len(lines) == 1682


def test_recbole_loads_leave_one_out(converted, tmp_path):
    import recbole_cdsr  # noqa: F401  (compat patches before recbole)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation

    from recbole_cdsr.utils import PROPERTIES

    root, _, _ = converted
    config = Config(
        model="SASRec",
        dataset=NAME,
        config_file_list=[str(PROPERTIES / "dataset" / f"{NAME}.yaml")],
        config_dict={
            "data_path": str(root),
            "checkpoint_dir": str(tmp_path / "saved"),
            "train_neg_sample_args": None,
            "state": "ERROR",
        },
    )
    assert config["eval_group_fields"] == ["user_group"]
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    assert len(train.dataset) == 100000 - 3 * 943
    assert len(valid.dataset) == len(test.dataset) == 943
    domain = dataset.item_feat["item_domain"]
    counts = {}
    for split, loader in (("valid", valid), ("test", test)):
        target_domain = domain[loader.dataset.inter_feat["item_id"]].tolist()
        names = pd.Series(dataset.id2token("item_domain", target_domain))
        counts[split] = names.value_counts().to_dict()
    # the second-last / last item of each user's sorted sequence
    assert counts == {
        "valid": {"other": 593, "drama": 350},
        "test": {"other": 561, "drama": 382},
    }
