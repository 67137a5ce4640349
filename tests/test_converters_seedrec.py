"""SeeDRec converters: Home and Electronic against spec seedrec.md §1.2 and §7.1."""

import pickle

import pandas as pd
import pytest

from recbole_cdsr.data.converters.seedrec import convert_home
from recbole_cdsr.data.registry import prepare_dataset

# spec seedrec.md §1.2: users, items, interactions, categories C, repeats
EXPECTED = {
    "home": (22788, 23603, 187778, 1265, 10146),
    "electronic": (56727, 45279, 507373, 781, 18117),
}


@pytest.fixture(scope="module")
def converted(tmp_path_factory, seed_source):
    root = tmp_path_factory.mktemp("seedrec_atomic")
    stats = {name: prepare_dataset(name, root, seed_source) for name in EXPECTED}
    return root, stats


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_counts_match_spec(converted, name):
    root, stats = converted
    users, items, inter, n_cats, repeats = EXPECTED[name]
    s = stats[name]
    assert (s["users"], s["items"], s["interactions"]) == (users, items, inter)
    assert s["domains"] == {name: {"items": items, "interactions": inter}}
    assert (s["categories"], s["repeated_interactions"]) == (n_cats, repeats)
    item = pd.read_csv(root / name / f"{name}.item", sep="\t", dtype=str)
    assert list(item.columns) == [
        "item_id:token",
        "item_domain:token",
        "categories:token_seq",
    ]
    assert len(item) == items and set(item["item_domain:token"]) == {name}
    cats = item["categories:token_seq"].str.split().explode()
    assert cats.nunique() == n_cats


def test_home_rows(converted):
    root, stats = converted
    assert stats["home"]["day_decreases"] == 0
    inter = pd.read_csv(root / "home" / "home.inter", sep="\t", dtype=str)
    assert list(inter.columns) == [
        "user_id:token",
        "item_id:token",
        "timestamp:float",
        "day:float",
    ]
    # user 1: items [18128, 22020, 10790, 22835, 9145] on 2014-12-13, 2015-02-26,
    # 2016-03-03 (x2), 2016-05-13
    assert inter.head(5).values.tolist() == [
        ["1", "18128", "0", "16417"],
        ["1", "22020", "1", "16492"],
        ["1", "10790", "2", "16863"],
        ["1", "22835", "3", "16863"],
        ["1", "9145", "4", "16934"],
    ]
    item = pd.read_csv(root / "home" / "home.item", sep="\t", dtype=str)
    row = item[item["item_id:token"] == "18128"].values.tolist()
    assert row == [["18128", "home", "351 781 108"]]


def test_electronic_position_timestamps(converted):
    root, stats = converted
    assert stats["electronic"]["timestamps"] == "position (upstream timestamps missing)"
    inter = pd.read_csv(root / "electronic" / "electronic.inter", sep="\t", dtype=str)
    assert list(inter.columns) == ["user_id:token", "item_id:token", "timestamp:float"]
    assert inter.iloc[0].tolist() == ["1", "6860", "0"]
    positions = inter.groupby("user_id:token", sort=False).cumcount().astype(str)
    assert (inter["timestamp:float"] == positions).all()


def _write_pickles(folder, log, times, cats):
    for fname, obj in [
        ("log_file_final.pkl", log),
        ("log_timestep_final.pkl", times),
        ("item_categoory_dict.pkl", cats),
    ]:
        with open(folder / fname, "wb") as f:
            pickle.dump(obj, f)
    return lambda rel: folder / rel.rsplit("/", 1)[1]


def test_small_home(tmp_path):
    day = 86400
    log = {2: [3, 1], 1: [1, 2, 1]}
    times = {2: [5 * day, 6 * day], 1: [day, day, 3 * day]}
    fetch = _write_pickles(tmp_path, log, times, {1: [7, 8], 2: [9], 3: [7]})
    stats = convert_home(fetch, tmp_path)
    assert (stats["users"], stats["items"], stats["interactions"]) == (2, 3, 5)
    assert (stats["categories"], stats["same_day_ties"]) == (3, 1)
    lines = (tmp_path / "home.inter").read_text().splitlines()
    rows = ["1\t1\t0\t1", "1\t2\t1\t1", "1\t1\t2\t3", "2\t3\t0\t5", "2\t1\t1\t6"]
    assert lines[1:] == rows
    lines = (tmp_path / "home.item").read_text().splitlines()
    assert lines[1:] == ["1\thome\t7 8", "2\thome\t9", "3\thome\t7"]


def test_bad_pickles(tmp_path):
    fetch = _write_pickles(tmp_path, {1: [1, 2]}, {1: [0]}, {1: [7], 2: [8]})
    with pytest.raises(ValueError, match="log_timestep_final.pkl: users or sequence"):
        convert_home(fetch, tmp_path)
    fetch = _write_pickles(tmp_path, {1: [1, 2]}, {1: [0, 0]}, {1: [7]})
    with pytest.raises(ValueError, match="item_categoory_dict.pkl: 1 item.*item 2"):
        convert_home(fetch, tmp_path)
