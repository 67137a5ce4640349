"""Nothing the user wrote is silently reinterpreted (issue 14, section 1).

Every dataset here is hand-made in tmp_path: a leave-one-out dataset ``t`` (``t.inter``,
``t.item``) or a fixed split (``t.train.inter``, ``t.valid.inter``, ``t.test.inter``).
"""

import logging

import pytest
import torch

from recbole_cdsr.config import Config
from recbole_cdsr.data.atomic import AtomicFileError, check_atomic_file
from recbole_cdsr.quick_start import run_recbole_cdsr
from recbole_cdsr.utils import create_dataset, data_preparation

INTER = "user_id:token\titem_id:token\ttimestamp:float\n"
ITEM = "item_id:token\titem_domain:token\n"
SMALL = {
    "hidden_size": 8, "inner_size": 16, "embedding_size": 8, "n_layers": 1, "n_heads": 1,
    "epochs": 1, "train_batch_size": 64, "eval_batch_size": 64, "show_progress": False,
    "state": "ERROR", "checkpoint_dir": "saved", "topk": [1, 2], "valid_metric": "NDCG@2",
}


def rows(*cells) -> str:
    return "".join("\t".join(map(str, r)) + "\n" for r in cells)


def items(n_a: int = 6, n_b: int = 6) -> str:
    return ITEM + rows(*[(f"a{i}", "x") for i in range(n_a)], *[(f"b{i}", "y") for i in range(n_b)])


def make(tmp_path, files: dict, name: str = "t") -> None:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    for suffix, text in files.items():
        data = text if isinstance(text, bytes) else text.encode()
        (folder / f"{name}.{suffix}").write_bytes(data)


def config(tmp_path, model="SASRec", **overrides):
    cfg = {
        "data_path": str(tmp_path),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "item_domain"]},
        "MAX_ITEM_LIST_LENGTH": 5,
        **SMALL,
        **overrides,
    }
    return Config(model, "t", config_dict=cfg)


def build(tmp_path, model="SASRec", **overrides):
    cfg = config(tmp_path, model, **overrides)
    dataset = create_dataset(cfg)
    return cfg, dataset, data_preparation(cfg, dataset)


def history_of(users: int, length: int, prefix="a"):
    """``users`` users with ``length`` rows each, items cycling through a0..a5."""
    return [(f"u{u}", f"{prefix}{(u + t) % 6}", 1000 + t) for u in range(users) for t in range(length)]


# ------------------------------------------------------------------ timestamps
def test_unix_seconds_keep_their_order(tmp_path):
    # float32 rounds 1700000123 and 1700000150 both to 1700000128; the tie then keeps
    # file order and a3 would wrongly become the test target.
    u1 = [("u1", "a0", 1700000000), ("u1", "a1", 1700000010), ("u1", "a2", 1700000150),
          ("u1", "a3", 1700000123)]
    make(tmp_path, {"inter": INTER + rows(*u1, *history_of(3, 5)), "item": items()})
    _, dataset, (_, valid, test) = build(tmp_path)
    assert dataset.inter_feat["timestamp"].dtype == torch.float64

    def target(split):
        feat = split._dataset.inter_feat
        row = int((feat["user_id"] == dataset.token2id("user_id", "u1")).nonzero())
        return dataset.id2token("item_id", int(feat["item_id"][row]))

    assert target(test) == "a2" and target(valid) == "a3"


def test_empty_timestamp_is_an_error_naming_file_line_field(tmp_path):
    make(tmp_path, {"inter": INTER + rows(*history_of(2, 4)) + "u9\ta1\t\n", "item": items()})
    with pytest.raises(AtomicFileError, match=r"t\.inter:10: field timestamp is empty.*mean"):
        build(tmp_path)


@pytest.mark.parametrize(
    "line, error",
    [
        ("u9\ta1\tnan\n", r"t\.inter:4: field timestamp is float but holds 'nan'"),
        ("NA\ta1\t5\n", r"t\.inter:4: field user_id 'NA' is read as missing"),
        ("\ta1\t5\n", r"t\.inter:4: field user_id is empty"),
        ('"u9\ta1\t5\n', r"t\.inter:4: field user_id .* starts with a double quote"),
        ("\n", r"t\.inter:4: blank line"),
    ],
)
def test_cells_recbole_would_fill_or_reread_are_errors(tmp_path, line, error):
    path = tmp_path / "t.inter"
    path.write_text(INTER + rows(("u1", "a1", 1), ("u1", "a2", 2)) + line)
    with pytest.raises(AtomicFileError, match=error):
        check_atomic_file(path)


def test_empty_token_in_item_file_is_an_error(tmp_path):
    make(tmp_path, {"inter": INTER + rows(*history_of(2, 4)), "item": items() + "a9\t\n"})
    with pytest.raises(AtomicFileError, match=r"t\.item:14: field item_domain is empty"):
        build(tmp_path)


def test_unloaded_columns_are_not_checked(tmp_path):
    text = "user_id:token\titem_id:token\tnote:float\n" + rows(("u1", "a1", ""))
    path = tmp_path / "t.inter"
    path.write_text(text)
    check_atomic_file(path, loaded=["user_id", "item_id"])
    with pytest.raises(AtomicFileError, match="field note is empty"):
        check_atomic_file(path)


# ------------------------------------------------------------------ file encoding
def test_header_only_inter_names_the_file(tmp_path):
    make(tmp_path, {"inter": INTER, "item": items()})
    with pytest.raises(AtomicFileError, match=r"t\.inter: the file has a header but no data rows"):
        build(tmp_path)


def test_non_utf8_byte_names_file_line_and_offset(tmp_path):
    good = INTER + rows(("u1", "a1", 1))
    make(tmp_path, {"inter": good.encode() + b"u2\ta\xff\t2\n", "item": items()})
    offset = len(good.encode()) + 4
    with pytest.raises(AtomicFileError, match=rf"t\.inter:3: byte b'\\xff' at byte offset {offset}"):
        build(tmp_path)


def test_utf8_bom_is_named(tmp_path):
    make(tmp_path, {"inter": b"\xef\xbb\xbf" + (INTER + rows(*history_of(2, 4))).encode(), "item": items()})
    with pytest.raises(AtomicFileError, match=r"t\.inter:1: .*UTF-8 BOM"):
        build(tmp_path)
    _, _, (_, _, test) = build(tmp_path, encoding="utf-8-sig")  # the documented way to keep it
    assert len(test._dataset) == 2


def test_field_and_seq_separators_are_honoured(tmp_path):
    comma = lambda text: text.replace("\t", ",")  # noqa: E731
    make(tmp_path, {"inter": comma(INTER + rows(*history_of(3, 5))), "item": comma(items())})
    with pytest.raises(AtomicFileError, match="set field_separator"):
        build(tmp_path)
    _, dataset, (train, _, test) = build(tmp_path, field_separator=",")
    assert len(train._dataset) == 6 and len(test._dataset) == 3
    # a fixed split with ';' between history items
    train_rows = rows(("u1", "a0;a1", "a2"), ("u2", "a1", "b0"))
    make(tmp_path, split_files(train_rows, rows(("u1", "a0;a1;a2", "a3")),
                               rows(("u1", "a0;a1;a2;a3", "b1"))))
    _, dataset, _ = build(tmp_path, **benchmark(), seq_separator=";")
    lists = dataset.inter_feat["item_id_list"]
    assert dataset.id2token("item_id", lists[0][:2]).tolist() == ["a0", "a1"]


def test_windows_line_endings_are_read_like_recbole(tmp_path):
    make(tmp_path, {"inter": (INTER + rows(*history_of(3, 5))).replace("\n", "\r\n"), "item": items()})
    _, _, (train, _, test) = build(tmp_path)
    assert len(train._dataset) == 6 and len(test._dataset) == 3


# ------------------------------------------------------------------ fixed splits
BENCH = "user_id:token\titem_id_list:token_seq\titem_id:token\n"


def benchmark(**extra):
    return {
        "benchmark_filename": ["train", "valid", "test"],
        "alias_of_item_id": ["item_id_list"],
        "load_col": {"inter": ["user_id", "item_id_list", "item_id"], "item": ["item_id", "item_domain"]},
        "MAX_ITEM_LIST_LENGTH": 3,
        **extra,
    }


def split_files(train, valid, test, header=BENCH):
    return {"train.inter": header + train, "valid.inter": header + valid,
            "test.inter": header + test, "item": items()}


def test_history_padded_with_zero_is_refused(tmp_path):
    padded = rows(("u1", "a0 a1", "a2"), ("u2", "a1 0 0", "a3"))
    make(tmp_path, split_files(padded, rows(("u1", "a0 a1 a2", "a3")), rows(("u1", "a1 a2 a3", "a4"))))
    with pytest.raises(AtomicFileError, match=r"t\.train\.inter:3: field item_id_list holds the token '0'.*padding"):
        build(tmp_path, **benchmark())


def test_zero_is_accepted_when_it_is_a_real_item(tmp_path):
    files = split_files(rows(("u1", "a0 0", "a2")), rows(("u1", "a0 0 a2", "a3")),
                        rows(("u1", "0 a2 a3", "0")))
    files["item"] = items() + "0\tx\n"
    make(tmp_path, files)
    _, dataset, _ = build(tmp_path, **benchmark())
    assert "0" in dataset.field2token_id["item_id"]


@pytest.mark.parametrize("model", ["SASRec", "GRU4Rec"])
def test_long_histories_keep_their_most_recent_items(tmp_path, caplog, model):
    long = " ".join(f"a{i}" for i in range(6))  # 6 items > MAX_ITEM_LIST_LENGTH 3
    train = rows(("u1", "a0", "a1"), ("u2", long, "b0"), ("u3", "b0 b1", "b2"))
    make(tmp_path, split_files(train, rows(("u1", long, "b3")), rows(("u2", f"{long} b0", "b4"))))
    caplog.set_level(logging.WARNING, logger="recbole_cdsr")
    _, dataset, _ = build(tmp_path, model, **benchmark())
    lists = dataset.inter_feat["item_id_list"]
    assert lists.shape[1] == 3
    assert dataset.id2token("item_id", lists[1]).tolist() == ["a3", "a4", "a5"]
    assert dataset.id2token("item_id", lists[4]).tolist() == ["a4", "a5", "b0"]
    assert dataset.inter_feat["item_length"].tolist() == [1, 3, 2, 3, 3]
    assert "t.train.inter: 1 of 3 rows have a item_id_list longer than MAX_ITEM_LIST_LENGTH=3" in caplog.text
    assert "t.test.inter: 1 of 1 rows" in caplog.text and "3 most recent items" in caplog.text
    # trains and evaluates (SASRec used to fail with an IndexError in its position embedding)
    run_config = dict(SMALL, **benchmark(), data_path=str(tmp_path))
    result = run_recbole_cdsr(model, "t", config_dict=run_config)
    assert result["test"]["all"]["n"] == 1


def test_split_files_without_history_column_are_named(tmp_path):
    header = "user_id:token\titem_id:token\n"
    make(tmp_path, split_files(rows(("u1", "a1")), rows(("u1", "a2")), rows(("u1", "a3")), header))
    cfg = benchmark()
    cfg["load_col"] = {"inter": ["user_id", "item_id"], "item": ["item_id", "item_domain"]}
    with pytest.raises(AtomicFileError, match=r"t\.train\.inter: a fixed split .* needs the history column item_id_list"):
        build(tmp_path, **cfg)


def test_seq_len_on_histories_is_refused(tmp_path):
    make(tmp_path, split_files(rows(("u1", "a0", "a1")), rows(("u1", "a0 a1", "a2")), rows(("u1", "a1 a2", "a3"))))
    with pytest.raises(ValueError, match=r"seq_len \{item_id_list: 2\} would keep the oldest"):
        build(tmp_path, **benchmark(seq_len={"item_id_list": 2}))


# ------------------------------------------------------------------ what is dropped
def test_users_left_out_of_splits_are_counted(tmp_path, caplog):
    inter = [("s1", "a0", 1)] + [("s2", f"a{t}", t) for t in range(2)]
    inter += [("s3", f"a{t}", t) for t in range(3)] + history_of(3, 5)
    make(tmp_path, {"inter": INTER + rows(*inter), "item": items()})
    caplog.set_level(logging.INFO, logger="recbole_cdsr")
    _, dataset, _ = build(tmp_path)
    report = dataset.split_report
    assert report["test"]["users_missing"] == 2
    assert report["test"]["missing_by_count"] == {1: 1, 2: 1}
    assert report["valid"]["missing_by_count"] == {1: 1, 2: 1, 3: 1}
    assert "t test split: 4 rows, 4 of 6 users; 2 users are not in it (1 with 1 interaction, 1 with 2 interactions)" in caplog.text


def test_filtered_rows_are_counted(tmp_path, caplog):
    inter = [("s1", "a0", 1)] + [("s2", f"a{t}", t) for t in range(2)] + history_of(3, 5)
    make(tmp_path, {"inter": INTER + rows(*inter), "item": items()})
    caplog.set_level(logging.WARNING, logger="recbole_cdsr")
    _, dataset, _ = build(tmp_path, user_inter_num_interval="[3,inf)")
    assert dataset.filter_report["user_inter_num_interval"] == {"rows": 3, "users": 2}
    assert "user_inter_num_interval='[3,inf)'" in caplog.text and "dropped 3 of 18" in caplog.text


def test_tiny_domain_warns_that_the_mean_is_meaningless(tmp_path, caplog):
    make(tmp_path, {"inter": INTER + rows(*history_of(3, 5), ("u0", "b0", 2000)), "item": items(6, 1)})
    caplog.set_level(logging.WARNING, logger="recbole_cdsr")
    build(tmp_path)
    assert "domain 'y' has 1 items" in caplog.text and "meaningless" in caplog.text
    assert "domain 'x'" not in caplog.text
