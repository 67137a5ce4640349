"""LLMCDSR converters: Food-Kitchen figures of spec llmcdsr.md 1.3 / 7.1 / 8.1."""

import json
import pickle
from pathlib import Path

import pandas as pd
import pytest

from recbole_cdsr.data.converters.llmcdsr import convert_movie_book
from recbole_cdsr.data.registry import prepare_dataset
from recbole_cdsr.data.sources import RawFileError

REPO = Path(__file__).resolve().parents[1]
FK = REPO.parent / "shared" / "seed_data" / "llmcdsr" / "food-kitchen"
N_A = 8661


@pytest.fixture(scope="module")
def food_kitchen(tmp_path_factory, seed_source):
    data_path = tmp_path_factory.mktemp("atomic")
    stats = prepare_dataset("food_kitchen", data_path, seed_source)
    return stats, data_path / "food_kitchen"


def _lines(path, n=None):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for _, line in zip(range(n or 10**9), f)]


def _raw_sequences(name):
    with open(FK / name) as f:
        rows = [line.rstrip("\n").split("\t") for line in f]
    return {uid: [int(i) for i in items.split(",")] for uid, items in rows}


def _global_tokens():
    tokens = {}
    for side, dom, offset in (("A", "food", 0), ("B", "kitchen", N_A)):
        with open(FK / f"item_set_{side}.pkl", "rb") as f:
            for asin, local in pickle.load(f).items():
                tokens[local + offset] = f"{dom}_{asin}"
    return tokens


def test_food_kitchen_stats(food_kitchen):
    stats, _ = food_kitchen
    assert stats["splits"] == {"train": 351104, "valid": 960, "test": 937}
    assert stats["targets"] == {
        "valid": {"food": 363, "kitchen": 597},
        "test": {"food": 300, "kitchen": 637},
    }
    assert stats["users"] == 5472 + 38191 + 7501 + 960 + 937
    assert stats["user_groups"] == {
        "food_only": 5472,
        "kitchen_only": 38191,
        "overlap": 7501 + 960 + 937,
    }
    assert stats["items"] == 36298
    # all five files: train 402,268 + valid 18,133 + test 15,726 (spec 1.3)
    assert stats["interactions"] == 436127
    assert stats["domains"] == {
        "food": {"items": 8661, "interactions": 37281 + 45849 + 8739 + 6447},
        "kitchen": {"items": 27637, "interactions": 265817 + 53321 + 9394 + 9279},
    }
    assert stats["items_never_seen"] == 0


def test_food_kitchen_files(food_kitchen):
    _, folder = food_kitchen
    train = _lines(folder / "food_kitchen.train.inter", 3)
    assert train == [
        "user_id:token\titem_id_list:token_seq\titem_id:token",
        "A_1\tfood_B000BIZT3E\tfood_B002IYDXW8",
        "A_1\tfood_B000BIZT3E food_B002IYDXW8\tfood_B0039NMF9E",
    ]
    items = _lines(folder / "food_kitchen.item")
    assert items[:2] == ["item_id:token\titem_domain:token", "food_B000BIZT3E\tfood"]
    assert items[1 + N_A + 2] == "kitchen_B003V02F22\tkitchen"  # B local 2
    assert len(items) == 1 + 36298
    users = _lines(folder / "food_kitchen.user")
    assert users[:2] == ["user_id:token\tuser_group:token_seq", "A_1\tfood_only"]
    assert "T_937\toverlap" in users and "B_38191\tkitchen_only" in users
    index = pd.read_csv(folder / "food_kitchen.item_index.tsv", sep="\t")
    assert index["official_index"].tolist() == list(range(36298))
    assert dict(zip(index["official_index"], index["item_id"])) == _global_tokens()


def test_food_kitchen_histories_are_last_50(food_kitchen):
    _, folder = food_kitchen
    tokens = _global_tokens()
    for split, prefix in (("valid", "V"), ("test", "T")):
        raw = _raw_sequences(f"{split}.txt")
        rows = pd.read_csv(folder / f"food_kitchen.{split}.inter", sep="\t")
        assert len(rows) == len(raw)
        for user, hist, target in rows.itertuples(index=False):
            seq = [tokens[i] for i in raw[user.removeprefix(f"{prefix}_")]]
            assert target == seq[-1] and hist.split(" ") == seq[:-1][-50:]
    # overlap-train user 34 has 78 items: its last prefix row keeps items 27..76
    seq = [tokens[i] for i in _raw_sequences("train_overlap.txt")["34"]]
    train = pd.read_csv(folder / "food_kitchen.train.inter", sep="\t")
    user_rows = train[train["user_id:token"] == "O_34"]
    assert len(user_rows) == 77
    assert user_rows.iloc[-1, 1].split(" ") == seq[27:77]
    assert user_rows.iloc[-1, 2] == seq[77]
    assert train.iloc[:, 1].str.count(" ").max() == 49


def test_food_kitchen_titles(food_kitchen):
    _, folder = food_kitchen
    lines = _lines(folder / "food_kitchen.item_text.jsonl")
    titles = dict(json.loads(line).values() for line in lines)
    assert len(titles) == 36298
    assert titles["kitchen_B003V02F22"] == "Keurig Mini B31 Plus Platinum Coffee Maker"
    assert not any(ch in t for t in titles.values() for ch in "\t\n\r")
    assert sum("&amp;" in t for t in titles.values()) > 0  # kept as published


def test_food_kitchen_loads_in_recbole(food_kitchen):
    import recbole_cdsr  # noqa: F401  (compat patches)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation

    _, folder = food_kitchen
    config = Config(
        model="SASRec",
        dataset="food_kitchen",
        config_file_list=[str(REPO / "properties" / "dataset" / "food_kitchen.yaml")],
        config_dict={
            "data_path": str(folder.parent),
            "state": "ERROR",
            "train_neg_sample_args": None,
        },
    )
    dataset = create_dataset(config)
    _, valid, test = data_preparation(config, dataset)
    domain = dataset.item_feat["item_domain"]
    for loader, food, kitchen in ((valid, 363, 597), (test, 300, 637)):
        split = loader._dataset
        target_domain = domain[split.inter_feat["item_id"]].tolist()
        names = dataset.id2token("item_domain", target_domain).tolist()
        assert (names.count("food"), names.count("kitchen")) == (food, kitchen)
        assert split.inter_feat["item_length"].max() == 50


def test_movie_book_names_missing_files(tmp_path, seed_source):
    with pytest.raises(RawFileError, match="train_B.txt") as err:
        prepare_dataset("movie_book", tmp_path, seed_source)
    assert "text_B.pkl" in str(err.value)
    assert not (tmp_path / "movie_book").exists()


def _fake_b_fetch(tmp_path, seed_source, train_b_lines):
    """Stands in the two unpublished Movie-Book files (and the user counts)."""
    with open(seed_source("llmcdsr/movie-book/item_set_B.pkl"), "rb") as f:
        asins_b = pickle.load(f)
    (tmp_path / "train_B.txt").write_text("".join(train_b_lines))
    (tmp_path / "instance_num.txt").write_text(f"12185\n{len(train_b_lines)}\n6652\n")
    with open(tmp_path / "text_B.pkl", "wb") as f:
        pickle.dump({asin: f"book\t{local}" for asin, local in asins_b.items()}, f)

    def fetch(rel):
        name = rel.rsplit("/", 1)[-1]
        if name in ("train_B.txt", "text_B.pkl", "instance_num.txt"):
            return tmp_path / name
        return seed_source(rel)

    return fetch


def test_movie_book_with_stand_in_b_files(tmp_path, seed_source):
    n_movie = 12875
    lines = ["1\t12875,12876,12877\n", "2\t106734,12875\n"]  # B-only, global ids
    fetch = _fake_b_fetch(tmp_path, seed_source, lines)
    out = tmp_path / "out"
    out.mkdir()
    stats = convert_movie_book(fetch, out)
    assert stats["splits"] == {
        "train": (142887 - 12185) + (104642 - 6652) + 3,
        "valid": 829,
        "test": 836,
    }
    assert stats["targets"]["valid"]["movie"] == 344
    assert stats["targets"]["test"]["movie"] == 311
    assert stats["domains"]["book"]["items"] == 93860
    rows = _lines(out / "movie_book.train.inter")
    b_rows = [r for r in rows if r.startswith("B_")]
    with open(seed_source("llmcdsr/movie-book/item_set_B.pkl"), "rb") as f:
        by_local = {v: k for k, v in pickle.load(f).items()}
    assert b_rows[0] == f"B_1\tbook_{by_local[0]}\tbook_{by_local[1]}"
    assert b_rows[-1] == f"B_2\tbook_{by_local[106734 - n_movie]}\tbook_{by_local[0]}"
    title = json.loads(_lines(out / "movie_book.item_text.jsonl")[n_movie])["title"]
    assert title == "book 0"


def test_malformed_sequence_names_file_and_line(tmp_path, seed_source):
    fetch = _fake_b_fetch(tmp_path, seed_source, ["1\t12875,12876\n", "2\t5,x\n"])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError, match=r"train_B.txt:2: item list"):
        convert_movie_book(fetch, out)
    fetch = _fake_b_fetch(tmp_path, seed_source, ["1\t12875,999999\n"])
    with pytest.raises(ValueError, match=r"train_B.txt:1: items must be global"):
        convert_movie_book(fetch, out)
