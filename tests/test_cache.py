"""Converted datasets and derived caches stay consistent (issue 14, section 3)."""

import json
import logging
import multiprocessing

import pytest

from recbole_cdsr.data.registry import STAMP, CacheError, prepare_dataset
from recbole_cdsr.data.sources import RawSource, sha256_of

NAME = "ml100k_tiny"


def _convert_in_child(root, log_file, barrier, queue):
    logging.basicConfig(filename=log_file, level=logging.INFO)
    barrier.wait()  # both processes start converting at the same moment
    queue.put(prepare_dataset(NAME, root))


def test_two_processes_converting_at_once_leave_one_valid_folder(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    root, logs = tmp_path / "data", [tmp_path / f"child{i}.log" for i in range(2)]
    procs = [ctx.Process(target=_convert_in_child, args=(root, log, barrier, queue)) for log in logs]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results[0] == results[1]
    converted = sum(log.read_text().count(f"converting dataset {NAME}") for log in logs)
    assert converted == 1  # the second process waited for the lock, then used the cache
    folder = root / NAME
    meta = json.loads((folder / STAMP).read_text())
    for rel, entry in meta["files"].items():
        assert sha256_of(folder / rel) == entry["sha256"]
    assert (folder / f"{NAME}.inter").is_file()
    assert sorted(p.name for p in root.iterdir()) == [f".{NAME}.lock", NAME]


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


# ------------------------------------------------------------------ derived caches
def unwritable(tmp_path):
    """A folder nobody can create files in: its parent is a regular file (chmod would not
    stop root, which runs these tests on CI)."""
    (tmp_path / "plain_file").write_text("")
    return tmp_path / "plain_file" / "cache"


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    from recbole_cdsr.data.atomic import write_atomically

    path = tmp_path / "emb-1.npy"
    path.write_text("old")

    def half_then_crash(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, half_then_crash)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["emb-1.npy"]


def test_i2vae_checks_its_cache_folder_before_lightgcn_trains(tiny_path, tmp_path, monkeypatch):
    from recbole_cdsr.config import Config
    from recbole_cdsr.model.sequential_recommender import i2vae_psg
    from recbole_cdsr.utils import create_dataset, data_preparation

    from conftest import tiny_config

    small = dict(hidden_size=8, latent_size=4, history_length=3, psg_embedding_size=8,
                 psg_epochs=1, n_layers=1, transfer_n_heads=2, scorer_hidden_size=4)
    config = Config("I2VAE", "tiny", config_dict=tiny_config(tiny_path, **small))
    splits = [loader._dataset for loader in data_preparation(config, create_dataset(config))]

    def lightgcn(*args, **kwargs):
        raise AssertionError("LightGCN trained although its result cannot be saved")

    monkeypatch.setattr(i2vae_psg, "_train_lightgcn", lightgcn)
    config["psg_seed"] = 11  # not cached yet
    config["data_path"] = str(unwritable(tmp_path))
    with pytest.raises(PermissionError, match=r"I2VAE's pseudo-sequence cache is written to .*plain_file/cache, which is not writable"):
        i2vae_psg.pseudo_sequences(splits, config)


def test_llmcdsr_checks_its_cache_folder_before_encoding(tmp_path):
    from recbole_cdsr.model.sequential_recommender.llmcdsr_stages import encode_cached

    class Encoder:
        id, dim = "fake", 4

        def encode(self, texts):
            raise AssertionError("encoded although the embeddings cannot be saved")

    with pytest.raises(PermissionError, match="LLMCDSR's text-embedding cache"):
        encode_cached(Encoder(), ["a title"], unwritable(tmp_path))
