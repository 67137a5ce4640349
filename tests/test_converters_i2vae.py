"""I2VAE converters against the figures of docs/specs i2vae.md section 1."""

from collections import Counter
from pathlib import Path
from typing import NamedTuple

import pytest

from recbole_cdsr.data.atomic import check_atomic_file
from recbole_cdsr.data.converters import i2vae
from recbole_cdsr.data.registry import dataset_info, prepare_dataset

REPO = Path(__file__).resolve().parents[1]
NAMES = ("cloth_sport", "phone_elec", "game_video")


class Spec(NamedTuple):
    """Spec section 1; pairs are (X, Y)."""

    users: int  # over both CSVs
    items: tuple[int, int]  # distinct ids in each domain's lists, both CSVs
    shared: int  # raw ids in both domains
    train: tuple[int, int]  # train-CSV rows per target domain
    test: tuple[int, int]  # test-CSV rows per target domain
    tail_len: tuple[int, int]
    cold: tuple[int, int]  # test rows
    tailed: tuple[int, int]  # test rows
    nohist: int  # test rows with no history in either domain
    overlap: int  # test rows with both lists non-empty
    test_users: int


# fmt: off
SPEC = {
    "cloth_sport": Spec(
        21290, (13826, 10859), 639, (9394, 9143), (2395, 2240), (4, 4),
        (319, 297), (1595, 1090), 308, 1542, 4543,
    ),
    "phone_elec": Spec(
        19136, (7052, 29023), 326, (6815, 9277), (1651, 2373), (4, 6),
        (262, 340), (944, 1532), 301, 1509, 3976,
    ),
    "game_video": Spec(
        24454, (12236, 8725), 37, (10463, 10036), (2642, 2483), (6, 6),
        (47, 45), (1491, 1290), 0, 463, 5088,
    ),
}
# fmt: on


@pytest.fixture(scope="module")
def built(tmp_path_factory, seed_source):
    root = tmp_path_factory.mktemp("i2vae_atomic")
    return root, {name: prepare_dataset(name, root, seed_source) for name in NAMES}


def _read(path):
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        return header, [line.rstrip("\n").split("\t") for line in f]


@pytest.mark.parametrize("name", NAMES)
def test_stats_match_spec(built, name):
    stats, spec = built[1][name], SPEC[name]
    x, y = dataset_info(name).domains
    assert stats["users"] == spec.users
    assert stats["items"] == sum(spec.items)
    assert stats["shared_raw_ids"] == spec.shared
    assert stats["interactions"] == sum(spec.train) + sum(spec.test)
    n_valid = stats["splits"]["valid"]
    assert stats["splits"] == {
        "train": sum(spec.train) - n_valid,
        "valid": n_valid,
        "test": sum(spec.test),
    }
    assert stats["targets"]["test"] == {x: spec.test[0], y: spec.test[1]}
    for dom, tok in enumerate((x, y)):
        assert stats["domains"][tok] == {
            "items": spec.items[dom],
            "interactions": spec.train[dom] + spec.test[dom],
        }
        # valid = 10% of the train CSV's rows of each target domain, half rounded up
        assert stats["targets"]["valid"][tok] == int(spec.train[dom] / 10 + 0.5)
        assert (
            stats["targets"]["train"][tok] + stats["targets"]["valid"][tok]
            == spec.train[dom]
        )
    tails = dict(zip((x, y), spec.tail_len))
    assert stats["tail_len"] == {"train_csv": tails, "test_csv": tails}
    assert stats["target_repeats_removed"] == {"train_csv": 0, "test_csv": 0}
    assert stats["test_psg_users"] == spec.test_users


@pytest.mark.parametrize("name", NAMES)
def test_test_subgroups_match_spec(built, name):
    groups, spec = built[1][name]["groups"], SPEC[name]
    x, y = dataset_info(name).domains
    test = groups["test"]
    assert (test[x]["cold"], test[y]["cold"]) == spec.cold
    assert (test[x]["tail"], test[y]["tail"]) == spec.tailed
    assert test[x]["nohist"] + test[y]["nohist"] == spec.nohist
    assert test[x]["overlap"] + test[y]["overlap"] == spec.overlap
    for split in ("train", "valid"):  # training rows have target-domain length >= 2
        assert groups[split][x]["cold"] == groups[split][y]["cold"] == 0


def test_cloth_sport_rows(built):
    folder = built[0] / "cloth_sport"
    header, rows = _read(folder / "cloth_sport.test.inter")
    assert header == [
        "user_id:token",
        "item_id_list:token_seq",
        "item_id:token",
        "hist_x:token_seq",
        "hist_y:token_seq",
        "row_group:token_seq",
    ]
    # test CSV line 325: user 1, seq_d1 [22880, 17201, 4917, 2139, 6704, 8384],
    # seq_d2 [8139, 11426], domain_id 1 -> other domain first, then the Y history
    cloth = "cloth_22880 cloth_17201 cloth_4917 cloth_2139 cloth_6704 cloth_8384"
    expected = ["1", f"{cloth} sport_8139", "sport_11426", cloth, "sport_8139"]
    assert rows[0] == expected + ["tail overlap"]
    nohist = [r for r in rows if "nohist" in r[5].split()]
    assert len(nohist) == 308
    assert all(r[1] == r[3] == r[4] == "" for r in nohist)
    assert all(r[5].split() == ["cold", "tail", "single", "nohist"] for r in nohist)
    header, items = _read(folder / "cloth_sport.item")
    assert header == ["item_id:token", "item_domain:token"]
    assert items[0] == ["cloth_0", "cloth"]
    assert items[-1] == ["sport_24505", "sport"]


@pytest.mark.parametrize("name", NAMES)
def test_files_are_consistent(built, name):
    folder = built[0] / name
    x, y = dataset_info(name).domains
    _, items = _read(folder / f"{name}.item")
    domain_of = dict(items)
    assert len(domain_of) == len(items)  # each item in exactly one domain
    assert all(item.split("_")[0] == dom for item, dom in items)
    keys = {}
    for split in ("train", "valid", "test"):
        path = folder / f"{name}.{split}.inter"
        check_atomic_file(path)
        _, rows = _read(path)
        for user, seq, target, hist_x, hist_y, groups in rows:
            own, other = hist_x.split(), hist_y.split()
            if domain_of[target] == y:
                own, other = other, own
            assert target not in own
            assert all(domain_of[i] == x for i in hist_x.split())
            assert all(domain_of[i] == y for i in hist_y.split())
            assert seq.split() == (other + own)[-i2vae.MAX_HISTORY :]
            assert ("cold" in groups.split()) == (not own)
        keys[split] = {(user, domain_of[target]) for user, _, target, *_ in rows}
        assert len(keys[split]) == len(rows)  # one row per (user, target domain)
    assert not keys["train"] & keys["valid"]
    header, psg = _read(folder / f"{name}.test_psg.tsv")
    assert header == ["user_id:token", "psg_x:token_seq", "psg_y:token_seq"]
    assert len(psg) == SPEC[name].test_users
    for _, psg_x, psg_y in psg:
        assert [domain_of[i] for i in psg_x.split()] == [x] * 20
        assert [domain_of[i] for i in psg_y.split()] == [y] * 20


def test_conversion_is_deterministic(built, seed_source, tmp_path):
    root, stats = built
    again = prepare_dataset("game_video", tmp_path, seed_source)
    assert again == stats["game_video"]
    for ext in ("train.inter", "valid.inter", "test.inter", "test_psg.tsv"):
        first = (root / "game_video" / f"game_video.{ext}").read_bytes()
        assert first == (tmp_path / "game_video" / f"game_video.{ext}").read_bytes()


def test_malformed_row_names_file_and_line(tmp_path):
    raw = tmp_path / "cloth_sport_train.csv"
    raw.write_text('user_id,seq_d1,seq_d2,domain_id\n5,"[1]",[],0\n6,"[3, x]",[],0\n')
    fetch = {"i2vae/cloth_sport_train.csv": raw}.__getitem__
    with pytest.raises(ValueError, match=r"_train.csv:3: seq_d1 .*'\[3, x\]'"):
        i2vae.convert_cloth_sport(fetch, tmp_path / "out")


def test_recbole_loads_cloth_sport(built):
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation

    root = built[0]
    config = Config(
        model="SASRec",
        dataset="cloth_sport",
        config_file_list=[str(REPO / "properties/dataset/cloth_sport.yaml")],
        config_dict={
            "data_path": str(root),
            "checkpoint_dir": str(root / "saved"),
            "train_neg_sample_args": None,
            "state": "ERROR",
        },
    )
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    assert [len(d.dataset) for d in (train, valid, test)] == [16684, 1853, 4635]
    assert dataset.item_num == 24685 + 1  # + [PAD]
    test_feat = test.dataset.inter_feat
    assert int((test_feat["item_length"] == 0).sum()) == 308  # empty histories kept
    domain = dataset.item_feat["item_domain"][test_feat["item_id"]].numpy()
    tokens = dataset.field2id_token["item_domain"]
    assert Counter(tokens[domain].tolist()) == {"cloth": 2395, "sport": 2240}
