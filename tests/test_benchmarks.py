"""The benchmark grid runner on the smoke grid: page, plots, resume, failing cells."""

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from conftest import REPO

def load_script(name: str):
    """A module from benchmarks/<name>.py (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = load_script("run")


def test_smoke_grid_page_plots_resume_and_failures(tmp_path, capsys):
    grid = yaml.safe_load((REPO / "benchmarks" / "grids" / "smoke.yaml").read_text())
    grid["models"] = grid["models"] + ["NoSuchModel"]
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump(grid))
    page = tmp_path / "out" / "results.md"

    assert bench.main([str(grid_file), f"--output={page}"]) == 1  # one model fails
    text = page.read_text()
    assert "## ml100k_tiny" in text and "| SASRec |" in text and "| GRU4Rec |" in text
    assert "NoSuchModel-ml100k_tiny-s1 | **failed**" in text
    assert "unknown model 'NoSuchModel'" in (page.parent / "cells" / "NoSuchModel-ml100k_tiny-s1.err").read_text()
    assert "2 of 6 cells failed" in text
    for png in ("ml100k_tiny_ndcg_at_10_per_domain.png", "ml100k_tiny_training_curves.png",
                "ml100k_tiny_time_per_epoch.png"):
        assert (page.parent / png).stat().st_size > 1000
        assert f"]({png})" in text
    # mean ± std over the two seeds, per domain
    cell = json.loads((page.parent / "cells" / "SASRec-ml100k_tiny-s1.json").read_text())
    assert set(cell["domains"]) == {"drama", "other"}
    row = next(line for line in text.splitlines() if line.startswith("| SASRec |"))
    assert row.count("±") == len(bench.subsets_of([{"result": cell}]))

    capsys.readouterr()
    stamp = (page.parent / "cells" / "SASRec-ml100k_tiny-s1.json").stat().st_mtime_ns
    bench.main([str(grid_file), f"--output={page}"])
    out = capsys.readouterr().out
    assert "SASRec-ml100k_tiny-s1: cached" in out and "GRU4Rec-ml100k_tiny-s2: cached" in out
    assert (page.parent / "cells" / "SASRec-ml100k_tiny-s1.json").stat().st_mtime_ns == stamp


def test_cell_command_passes_config(tmp_path):
    grid = bench.load_grid(REPO / "benchmarks" / "grids" / "smoke.yaml")
    cell = bench.cells(grid)[0]
    cmd = bench.cell_command(grid, cell, tmp_path / "r.json")
    assert f"--model={cell['model']}" in cmd and "--seed=1" in cmd
    assert "--show_progress=False" in cmd and f"--result_file={tmp_path / 'r.json'}" in cmd


def test_results_table_orders_metrics_and_skips_group_cells():
    results_table = load_script("results_table")
    row = {"n": 4, "ndcg@10": 0.25, "hit@10": 0.5, "hit@5": 0.25}
    result = {"model": "M", "time": {"train_s": 30.0, "epochs": 3},
              "test": {"all": row, "food": {**row, "n": 1}, "food.overlap": row}}
    lines = results_table.table([result]).splitlines()
    assert lines[0] == "| model | subset | n | hit@5 | hit@10 | ndcg@10 | train s/epoch |"
    assert lines[2] == "| M | all | 4 | 0.2500 | 0.5000 | 0.2500 | 10 |"
    assert len(lines) == 4 and lines[3].startswith("| M | food | 1 |")
    assert "| hit@10 |" in results_table.table([result], ["hit@10"]).splitlines()[0]


def test_user_slice_of_a_benchmark_split_keeps_the_first_users_of_each_file(tmp_path):
    from recbole_cdsr.data.slice import write_user_slice

    src = tmp_path / "src" / "ds"
    src.mkdir(parents=True)
    header = "user_id:token\titem_id:token\n"
    rows = {"train": [3, 1, 2, 1, 10], "valid": [2, 3], "test": [7, 9, 8]}  # disjoint test users
    for split, users in rows.items():
        (src / f"ds.{split}.inter").write_text(header + "".join(f"{u}\ti{u}\n" for u in users))
    (src / "ds.item").write_text("item_id:token\ni1\ni2\n")
    (src / "ds.user").write_text("user_id:token\n" + "".join(f"{u}\n" for u in range(1, 11)))
    out = write_user_slice(src, tmp_path, "ds_first2", 2)

    def users(suffix):
        text = (out / f"ds_first2.{suffix}").read_text().splitlines()[1:]
        return [int(line.split("\t")[0]) for line in text]

    assert users("train.inter") == [1, 2, 1] and users("valid.inter") == [2, 3]
    assert users("test.inter") == [7, 8]  # the test file's own first users
    assert users("user") == [1, 2, 3, 7, 8]  # the union of the kept users
    assert (out / "ds_first2.item").read_text() == (src / "ds.item").read_text()


def _split_dataset(root, users_by_split, item_domain):
    src = root / "src" / "ds"
    src.mkdir(parents=True)
    header = "user_id:token\titem_id:token\n"
    for split, rows in users_by_split.items():
        text = header + "".join(f"{u}\t{i}\n" for u, i in rows)
        (src / f"ds.{split}.inter").write_text(text)
    (src / "ds.item").write_text(
        "item_id:token\titem_domain:token\n" + "".join(f"{i}\t{d}\n" for i, d in item_domain))
    return src


def test_user_slice_refuses_a_slice_that_loses_a_domain_and_a_seed_samples_users(tmp_path):
    """food_kitchen's ids put its food-only users first: its first users hold no kitchen
    target. Such a slice is refused (naming the domain); a seeded sample is uniform."""
    from recbole_cdsr.data.slice import write_user_slice

    train = [(f"A_{k}", "f1") for k in range(10)] + [(f"B_{k}", "k1") for k in range(10)]
    src = _split_dataset(tmp_path, {"train": train, "valid": [("O_1", "f1")],
                                    "test": [("O_2", "k1")]}, [("f1", "food"), ("k1", "kitchen")])
    with pytest.raises(ValueError, match=r"ds_first5.*kitchen.*10.*seed"):
        write_user_slice(src, tmp_path, "ds_first5", 5)
    assert not (tmp_path / "ds_first5").exists()  # refused before writing

    out = write_user_slice(src, tmp_path, "ds_s10", 10, seed=3)
    kept = [line.split("\t")[0] for line in (out / "ds_s10.train.inter").read_text().splitlines()[1:]]
    assert len(kept) == 10 and {u[0] for u in kept} == {"A", "B"}
    again = write_user_slice(src, tmp_path / "again", "ds_s10", 10, seed=3)
    assert (again / "ds_s10.train.inter").read_text() == (out / "ds_s10.train.inter").read_text()
    other = write_user_slice(src, tmp_path / "other", "ds_s10", 10, seed=4)
    assert (other / "ds_s10.train.inter").read_text() != (out / "ds_s10.train.inter").read_text()
    # a file with fewer users than asked keeps them all, whatever the seed
    assert (out / "ds_s10.valid.inter").read_text().splitlines()[1:] == ["O_1\tf1"]
