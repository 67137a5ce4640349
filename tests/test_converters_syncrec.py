"""SyNCRec converter: amazon5 figures of spec syncrec.md section 1."""

import collections
from pathlib import Path

import pandas as pd
import pytest

from recbole_cdsr.data.converters.syncrec import convert_amazon5
from recbole_cdsr.data.registry import prepare_dataset

REPO = Path(__file__).resolve().parents[1]
HEADER = "\tuser_id\titem\ttype\tunix_time\tlist_len\n"


@pytest.fixture(scope="module")
def amazon5(tmp_path_factory, seed_source):
    data_path = tmp_path_factory.mktemp("atomic")
    stats = prepare_dataset("amazon5", data_path, seed_source)
    return stats, data_path / "amazon5"


def test_amazon5_stats(amazon5):
    stats, _ = amazon5
    assert stats["users"] == 500
    assert (stats["items"], stats["interactions"]) == (14853, 16123)
    assert stats["domains"] == {
        "books": {"items": 4528, "interactions": 4846},
        "clothing": {"items": 4421, "interactions": 4765},
        "toys": {"items": 2382, "interactions": 2563},
        "sports": {"items": 2311, "interactions": 2505},
        "videogames": {"items": 1211, "interactions": 1444},
    }
    assert stats["last_item_domain"] == {
        "books": 94, "clothing": 187, "toys": 71, "sports": 107, "videogames": 41
    }
    assert stats["repeat_interactions"] == 364
    assert stats["consecutive_same_unix_time"] == 8721


def test_amazon5_files(amazon5, seed_source):
    _, folder = amazon5
    inter = pd.read_csv(folder / "amazon5.inter", sep="\t", dtype=str)
    assert list(inter.columns) == ["user_id:token", "item_id:token", "timestamp:float"]
    assert inter.iloc[0].tolist() == ["A102YHH21R2TYX", "videogames_B00D7QX9WK", "0"]
    # timestamps are positions 0..n-1, in the raw file's order
    positions = inter.groupby("user_id:token").cumcount().astype(str)
    assert (inter["timestamp:float"] == positions).all()
    raw = pd.read_csv(seed_source("syncrec/amazon_seq.txt"), sep="\t", index_col=0)
    first = raw.iloc[0]
    user_items = inter.loc[inter["user_id:token"] == first["user_id"], "item_id:token"]
    assert [i.split("_", 1)[1] for i in user_items] == first["item"].split(",")
    item = pd.read_csv(folder / "amazon5.item", sep="\t", dtype=str)
    assert list(item.columns) == ["item_id:token", "item_domain:token"]
    assert item["item_id:token"].is_unique and len(item) == 14853
    prefix = item["item_id:token"].str.split("_").str[0]
    assert (prefix == item["item_domain:token"]).all()


def test_amazon5_recbole_split(amazon5):
    import recbole_cdsr  # noqa: F401  (compat patches)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation

    _, folder = amazon5
    config = Config(
        model="SASRec",
        dataset="amazon5",
        config_file_list=[str(REPO / "properties" / "dataset" / "amazon5.yaml")],
        config_dict={
            "data_path": str(folder.parent),
            "state": "ERROR",
            "train_neg_sample_args": None,
        },
    )
    dataset = create_dataset(config)
    assert dataset.inter_num == 16123 and dataset.user_num == 501
    train, valid, test = data_preparation(config, dataset)
    assert [len(d._dataset) for d in (train, valid, test)] == [16123 - 1500, 500, 500]
    targets = test._dataset.inter_feat["item_id"]
    domains = dataset.item_feat["item_domain"][targets].tolist()
    counts = collections.Counter(dataset.id2token("item_domain", domains).tolist())
    assert counts == {
        "clothing": 187, "sports": 107, "books": 94, "toys": 71, "videogames": 41
    }


def _convert_text(tmp_path, body):
    raw = tmp_path / "amazon_seq.txt"
    raw.write_text(HEADER + body)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return convert_amazon5(lambda rel: raw, out)


def test_amazon5_rejects_bad_rows(tmp_path):
    stats = _convert_text(tmp_path, "0\tu1\ta,b\tBooks,Video_Games\t1,1\t2\n")
    assert stats["domains"]["videogames"] == {"items": 1, "interactions": 1}
    with pytest.raises(ValueError, match=r"amazon_seq.txt:3: field type holds 'Music'"):
        _convert_text(
            tmp_path, "0\tu1\ta,b\tBooks,Books\t1,2\t2\n1\tu2\tc\tMusic\t3\t1\n"
        )
    with pytest.raises(ValueError, match=r"amazon_seq.txt:2: field list_len"):
        _convert_text(tmp_path, "0\tu1\ta,b\tBooks,Books\t1,2\t3\n")
    with pytest.raises(ValueError, match=r"item a appears under several domains"):
        _convert_text(tmp_path, "0\tu1\ta,a\tBooks,Toys_and_Games\t1,2\t2\n")
