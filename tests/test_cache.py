"""Converted datasets and derived caches stay consistent (issue 14, section 3)."""

import json
import logging
import multiprocessing

import pytest

from recbole_cdsr.data.registry import STAMP, CacheError, prepare_dataset
from recbole_cdsr.data.sources import RawSource, sha256_of

NAME = "ml100k_tiny"


def _convert_in_child(root, barrier, queue):
    barrier.wait()  # both processes start converting at the same moment
    queue.put(prepare_dataset(NAME, root))


def test_two_processes_converting_at_once_leave_one_valid_folder(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_convert_in_child, args=(tmp_path, barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results[0] == results[1]
    folder = tmp_path / NAME
    meta = json.loads((folder / STAMP).read_text())
    for rel, entry in meta["files"].items():
        assert sha256_of(folder / rel) == entry["sha256"]
    assert (folder / f"{NAME}.inter").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".{NAME}.lock", NAME]


@pytest.fixture
def converted(tmp_path):
    prepare_dataset(NAME, tmp_path)
    return tmp_path, tmp_path / NAME


def test_stats_json_records_counts_and_checksums(converted):
    _, folder = converted
    files = json.loads((folder / STAMP).read_text())["files"]
    inter = files[f"{NAME}.inter"]
    text = (folder / f"{NAME}.inter").read_bytes()
    assert inter == {"bytes": len(text), "lines": text.count(b"\n"),
                     "sha256": sha256_of(folder / f"{NAME}.inter")}
    assert {f"{NAME}.item", f"{NAME}.user", "README.md"} <= set(files)


@pytest.mark.parametrize("damage", ["edit", "delete"])
def test_edited_or_incomplete_cache_is_rebuilt(converted, caplog, damage):
    root, folder = converted
    inter = folder / f"{NAME}.inter"
    original = inter.read_bytes()
    if damage == "edit":
        inter.write_bytes(original + b"1\tdrama_1\t0\n")
    else:
        inter.unlink()
    caplog.set_level(logging.WARNING, logger="recbole_cdsr")
    prepare_dataset(NAME, root)
    assert inter.read_bytes() == original
    assert ("was changed after conversion" if damage == "edit" else "is missing") in caplog.text
    assert "rebuilding it from the raw files" in caplog.text


def test_derived_files_in_the_folder_do_not_invalidate_it(converted):
    root, folder = converted
    stamp = (folder / STAMP).stat().st_mtime_ns
    (folder / f"{NAME}.i2vae_psg.0123.tsv").write_text("user_id:token\n")
    prepare_dataset(NAME, root)
    assert (folder / STAMP).stat().st_mtime_ns == stamp


def test_edited_cache_without_raw_files_is_refused(tmp_path, seed_source):
    prepare_dataset("amazon5", tmp_path, seed_source)
    folder = tmp_path / "amazon5"
    with open(folder / "amazon5.inter", "a") as f:
        f.write("x\n")
    (tmp_path / "empty_mirror").mkdir()
    offline = RawSource(tmp_path / "empty_mirror", cache=tmp_path / "cache", allow_download=False)
    with pytest.raises(CacheError, match=r"amazon5\.inter was changed after conversion.*cannot be rebuilt"):
        prepare_dataset("amazon5", tmp_path, offline)
    assert (folder / "amazon5.inter").read_text().endswith("x\n")  # left for the user to inspect


def test_stamp_without_file_checksums_is_rebuilt(converted):
    root, folder = converted
    meta = json.loads((folder / STAMP).read_text())
    del meta["files"]  # a cache written before stats.json recorded the files
    (folder / STAMP).write_text(json.dumps(meta))
    prepare_dataset(NAME, root)
    assert "files" in json.loads((folder / STAMP).read_text())
