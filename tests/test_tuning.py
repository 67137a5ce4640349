"""Tuning (hyperopt, ray) and multi-process training on the tiny dataset, CPU only."""

import csv
import socket

import pytest

from recbole_cdsr.quick_start import run, run_recbole_cdsr
from recbole_cdsr.tuning import read_params_file, tune

from conftest import tiny_config


@pytest.fixture
def params_file(tmp_path):
    path = tmp_path / "space.hyper"
    path.write_text("learning_rate choice [0.0001,0.01]\n")
    return path


def check_tables(out, n_trials):
    rows = list(csv.DictReader(open(out["files"]["csv"])))
    assert len(rows) == n_trials == len(out["trials"])
    valid_col = next(c for c in rows[0] if c.startswith("valid "))
    scores = [float(r[valid_col]) for r in rows]
    selected = [i for i, r in enumerate(rows) if r["selected"] == "yes"]
    assert selected == [scores.index(max(scores))]  # best on validation (NDCG: bigger)
    assert "ndcg@10=" in rows[selected[0]]["test (selected only)"]
    assert all(r["test (selected only)"] == "" for i, r in enumerate(rows) if i not in selected)
    assert out["test"]["all"]["n"] == 60
    for key in ("md", "png"):
        with open(out["files"][key], "rb") as f:
            assert len(f.read()) > 100


def test_params_file_syntax(tmp_path):
    good = tmp_path / "good.hyper"
    good.write_text("learning_rate loguniform -8,0\nhidden_size choice [64,128]\n"
                    "x quniform 1,5,1\n")
    assert read_params_file(good) == {
        "learning_rate": ("loguniform", [-8.0, 0.0]),
        "hidden_size": ("choice", [64, 128]),
        "x": ("quniform", [1.0, 5.0, 1.0]),
    }
    bad = tmp_path / "bad.hyper"
    bad.write_text("hidden_size gaussian 1,2\n")
    with pytest.raises(ValueError, match=r"bad\.hyper:1: unknown kind 'gaussian'"):
        read_params_file(bad)


def test_hyperopt_two_trials(tiny_path, tmp_path, params_file):
    out = tune("SASRec", "tiny", "hyperopt", params_file, max_evals=2, algo="exhaustive",
               base_config=tiny_config(tiny_path), tune_result=tmp_path / "t.csv")
    assert sorted(r["params"]["learning_rate"] for r in out["trials"]) == [0.0001, 0.01]
    check_tables(out, 2)


def test_ray_two_trials_in_parallel(tiny_path, tmp_path, params_file):
    import ray

    try:
        out = tune("SASRec", "tiny", "ray", params_file, max_evals=2, algo="exhaustive",
                   base_config=tiny_config(tiny_path, epochs=2), tune_result=tmp_path / "r.csv",
                   cpus_per_trial=1, local_dir=tmp_path / "ray")
    finally:
        ray.shutdown()
    assert all(r["status"] == "TERMINATED" for r in out["trials"])
    check_tables(out, 2)


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def test_two_process_ddp_matches_one_process(tiny_path):
    config = tiny_config(tiny_path, epochs=1, train_batch_size=128, hidden_dropout_prob=0.0,
                         attn_dropout_prob=0.0, learning_rate=0.001)
    single = run_recbole_cdsr("SASRec", "tiny", config_dict=dict(config))
    double = run("SASRec", "tiny", config_dict=dict(config), nproc=2, ip="127.0.0.1",
                 port=free_port())
    assert double is not None and double["test"]["all"]["n"] == 60
    # Each rank sums its per-batch mean losses over the same number of batches (batch
    # halved, data halved), so the epoch losses agree up to shuffling noise.
    assert double["train_loss"][0] == pytest.approx(single["train_loss"][0], rel=0.05)
