"""ADARec converters: Beauty, Sports, Toys, Yelp against spec adarec.md §1."""

from pathlib import Path

import pandas as pd
import pytest

from recbole_cdsr.data.converters.adarec import convert_beauty, read_user_lines
from recbole_cdsr.data.registry import prepare_dataset

# spec adarec.md §1: users, items, interactions
EXPECTED = {
    "beauty": (22363, 12101, 198502),
    "sports": (35598, 18357, 296337),
    "toys": (19412, 11924, 167597),
    "yelp": (30431, 20033, 316354),
}


@pytest.fixture(scope="module")
def converted(tmp_path_factory, seed_source):
    root = tmp_path_factory.mktemp("adarec_atomic")
    stats = {name: prepare_dataset(name, root, seed_source) for name in EXPECTED}
    return root, stats


def _inter(root: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(root / name / f"{name}.inter", sep="\t", dtype=str)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_counts_match_spec(converted, name):
    root, stats = converted
    users, items, inter = EXPECTED[name]
    s = stats[name]
    assert (s["users"], s["items"], s["interactions"]) == (users, items, inter)
    assert s["domains"] == {name: {"items": items, "interactions": inter}}
    assert s["sequence_length"]["min"] == 5
    frame = _inter(root, name)
    assert list(frame.columns) == ["user_id:token", "item_id:token", "timestamp:float"]
    assert len(frame) == inter
    assert frame["user_id:token"].nunique() == users
    assert not (root / name / f"{name}.item").exists()


def test_beauty_rows_and_blank_line(converted):
    root, stats = converted
    assert stats["beauty"]["blank_lines_skipped"] == 1
    frame = _inter(root, "beauty")
    # raw line 2: "2 6 7 8 9 10 4 11"
    user2 = frame[frame["user_id:token"] == "2"]
    assert user2["item_id:token"].tolist() == ["6", "7", "8", "9", "10", "4", "11"]
    assert user2["timestamp:float"].tolist() == [str(k) for k in range(7)]
    assert frame.iloc[-1].tolist() == ["22363", "10487", "4"]


def test_yelp_keeps_repeats(converted):
    root, stats = converted
    assert stats["yelp"]["repeated_interactions"] == 11830
    user1 = _inter(root, "yelp").query("`user_id:token` == '1'")["item_id:token"]
    assert user1.tolist()[:8] == ["1", "2", "3", "4", "3", "5", "6", "3"]


def test_malformed_lines(tmp_path):
    raw = tmp_path / "raw.txt"
    raw.write_text("1 1 2 3\n\n2 4 5\n")
    users, seqs, blank = read_user_lines(raw, "raw.txt")
    assert users.tolist() == [1, 2] and blank == 1
    assert [s.tolist() for s in seqs] == [[1, 2, 3], [4, 5]]
    raw.write_text("1 1 2 3\n2 4 x5 6\n")
    with pytest.raises(ValueError, match=r"raw\.txt:2: item 2 'x5'"):
        read_user_lines(raw, "raw.txt")
    raw.write_text("1 1 2\n1 3 4\n")
    with pytest.raises(ValueError, match=r"raw\.txt:2: user id 1 already used on"):
        read_user_lines(raw, "raw.txt")


def test_convert_small_file(tmp_path):
    raw = tmp_path / "Beauty"
    raw.write_text("2 7 8 9\n1 5 6 5\n\n")
    stats = convert_beauty(lambda rel: raw, tmp_path)
    assert (stats["users"], stats["items"], stats["interactions"]) == (2, 5, 6)
    assert stats["repeated_interactions"] == 1
    lines = (tmp_path / "beauty.inter").read_text().splitlines()
    assert lines[0] == "user_id:token\titem_id:token\ttimestamp:float"
    rows = ["1\t5\t0", "1\t6\t1", "1\t5\t2", "2\t7\t0", "2\t8\t1", "2\t9\t2"]
    assert lines[1:] == rows
