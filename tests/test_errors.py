"""Bad input gets an error that names the file, line, field or key."""

import shutil

import pytest

from recbole_cdsr.config import Config
from recbole_cdsr.data.atomic import AtomicFileError, check_atomic_file
from recbole_cdsr.data.registry import dataset_info, prepare_dataset
from recbole_cdsr.data.sources import RawFileError, RawSource, upstream_url
from recbole_cdsr.utils import create_dataset, get_model


def write(path, text):
    path.write_text(text)
    return path


def test_malformed_atomic_line_names_file_and_line(tmp_path):
    path = write(tmp_path / "d.inter", "user_id:token\titem_id:token\n1\t2\n3\n")
    with pytest.raises(AtomicFileError, match=r"d\.inter:3: 1 tab-separated cells"):
        check_atomic_file(path)


def test_bad_float_cell_names_field(tmp_path):
    path = write(tmp_path / "d.inter", "user_id:token\ttimestamp:float\n1\tyesterday\n")
    with pytest.raises(AtomicFileError, match=r"d\.inter:2: field timestamp"):
        check_atomic_file(path)


def test_bad_header_type(tmp_path):
    path = write(tmp_path / "d.inter", "user_id:token\titem_id:int\n1\t2\n")
    with pytest.raises(AtomicFileError, match=r"d\.inter:1: header cell 'item_id:int'"):
        check_atomic_file(path)


def test_missing_field_is_named(tmp_path):
    path = write(tmp_path / "d.inter", "user_id:token\titem_id:token\n1\t2\n")
    with pytest.raises(AtomicFileError, match=r"\['timestamp'\] are required"):
        check_atomic_file(path, required=["user_id", "timestamp"])


def test_unknown_model_lists_models():
    with pytest.raises(ValueError, match="unknown model 'SASRek'.*SASRec"):
        get_model("SASRek")


def test_unknown_dataset_lists_registry(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'food_kitchn'.*food_kitchen"):
        dataset_info("food_kitchn")
    config = Config("SASRec", "nowhere", config_dict={"data_path": str(tmp_path)})
    with pytest.raises(ValueError, match="unknown dataset 'nowhere'.*food_kitchen"):
        create_dataset(config)


def test_unknown_load_col_field_is_named(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    write(folder / "mine.inter", "user_id:token\titem_id:token\ttimestamp:float\n1\t2\t0\n")
    config = Config(
        "SASRec",
        "mine",
        config_dict={"data_path": str(tmp_path), "load_col": {"inter": ["user_id", "item_id", "rating"]}},
    )
    with pytest.raises(AtomicFileError, match=r"mine\.inter: field\(s\) \['rating'\]"):
        create_dataset(config)


def test_item_without_domain_is_an_error(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    rows = "".join(f"{u}\t{i}\t{t}\n" for u in (1, 2) for t, i in enumerate(("a", "b", "c", "d")))
    write(folder / "mine.inter", "user_id:token\titem_id:token\ttimestamp:float\n" + rows)
    write(folder / "mine.item", "item_id:token\titem_domain:token\na\tx\nb\ty\nc\tx\n")
    config = Config(
        "SASRec",
        "mine",
        config_dict={
            "data_path": str(tmp_path),
            "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "item_domain"]},
        },
    )
    with pytest.raises(ValueError, match=r"mine\.inter: 2 interactions have a item_id with no row in mine\.item \(e\.g\. \['d'\]"):
        create_dataset(config)


def test_checksum_mismatch_names_file_and_fix(tmp_path, seed_source):
    rel = "syncrec/voca_type.txt"
    mirror = tmp_path / "mirror"
    (mirror / "syncrec").mkdir(parents=True)
    shutil.copy(seed_source.mirror / rel, mirror / rel)
    with open(mirror / rel, "a") as f:
        f.write("tampered\n")
    source = RawSource(mirror, cache=tmp_path / "cache", allow_download=False)
    with pytest.raises(RawFileError, match=r"voca_type\.txt \(from mirror\) fails its checksum"):
        source(rel)


def test_missing_mirror_file_says_where_to_put_it(tmp_path):
    (tmp_path / "mirror").mkdir()
    source = RawSource(tmp_path / "mirror", cache=tmp_path / "cache", allow_download=False)
    with pytest.raises(RawFileError, match=r"adarec/Beauty not found .*RECBOLE_CDSR_MIRROR"):
        source("adarec/Beauty")
    with pytest.raises(RawFileError, match="does not exist"):
        RawSource(tmp_path / "absent")


def test_unreachable_url_names_file(tmp_path, monkeypatch):
    import urllib.request

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("no route")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.delenv("RECBOLE_CDSR_MIRROR", raising=False)  # before the source reads it
    source = RawSource(None, cache=tmp_path / "cache")
    with pytest.raises(RawFileError, match=r"could not download syncrec/voca_type\.txt"):
        source("syncrec/voca_type.txt")
    assert not (tmp_path / "cache" / "syncrec" / "voca_type.txt").exists()


def test_upstream_urls_are_pinned():
    assert upstream_url("adarec/Beauty") == (
        "https://raw.githubusercontent.com/ZhaoChao52/ADARec/"
        "90faad2ad52a32b5aca32d47f6df98e6142a9cb5/data/Beauty"
    )
    assert "WujiangXu/IM-VAE" in upstream_url("i2vae/phone_elec_test_csu_updated.csv")
    assert "YennNing/I2VAE" in upstream_url("i2vae/cloth_sport_test_csu_updated.csv")
    assert upstream_url("i2vae/lightgcn/cloth_sport/train.txt").endswith(
        "LightGCN/data/cloth_sport/train.txt"
    )


def test_conversion_is_cached(tmp_path, seed_source):
    first = prepare_dataset("amazon5", tmp_path, seed_source)
    stamp = (tmp_path / "amazon5" / "stats.json").stat().st_mtime_ns
    assert prepare_dataset("amazon5", tmp_path, seed_source) == first
    assert (tmp_path / "amazon5" / "stats.json").stat().st_mtime_ns == stamp
