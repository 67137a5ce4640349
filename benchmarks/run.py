"""Grid runner: models x datasets x seeds through the normal CLI, then a results page.

    python benchmarks/run.py benchmarks/grids/smoke.yaml --output=DIR/results.md

The grid yaml:

    name: smoke
    models: [SASRec, GRU4Rec]
    datasets: [ml100k_tiny]
    seeds: [1, 2]
    config: {epochs: 1, hidden_size: 16}        # every cell
    model_config: {GRU4Rec: {embedding_size: 16}}  # per model (optional)
    dataset_config: {ml100k_tiny: {...}}        # per dataset (optional)
    config_files: [properties/experiment/X.yaml] # optional, relative to the repo
    metrics: [ndcg@10, hit@10]                  # columns of the tables
    paper: {food_kitchen: {LLMCDSR: {food: {ndcg@10: 0.05}}}}  # optional

Each cell writes ``<DIR>/cells/<model>-<dataset>-s<seed>.json``; a cell whose JSON
exists is skipped (resume). A failing cell keeps its log tail in ``<cell>.err`` and is
listed on the page.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from recbole_cdsr.literal import format_literal

REPO = Path(__file__).resolve().parents[1]
BASELINES = ("SASRec", "GRU4Rec", "BERT4Rec")


def load_grid(path: Path) -> dict:
    grid = yaml.safe_load(Path(path).read_text())
    for key in ("models", "datasets"):
        if not grid.get(key):
            raise ValueError(f"{path}: grid needs a non-empty '{key}' list")
    grid.setdefault("name", Path(path).stem)
    grid.setdefault("seeds", [2020])
    grid.setdefault("metrics", ["ndcg@10", "hit@10"])
    return grid


def cells(grid: dict) -> list[dict]:
    out = []
    for dataset in grid["datasets"]:
        for model in grid["models"]:
            for seed in grid["seeds"]:
                out.append({"model": model, "dataset": dataset, "seed": seed,
                            "id": f"{model}-{dataset}-s{seed}"})
    return out


def cell_command(grid: dict, cell: dict, result_file: Path) -> list[str]:
    config = {**(grid.get("config") or {}),
              **(grid.get("model_config") or {}).get(cell["model"], {}),
              **(grid.get("dataset_config") or {}).get(cell["dataset"], {}),
              "seed": cell["seed"], "result_file": str(result_file)}
    cmd = [sys.executable, str(REPO / "run_recbole_cdsr.py"), f"--model={cell['model']}",
           f"--dataset={cell['dataset']}"]
    files = [str((REPO / f).resolve()) for f in grid.get("config_files") or []]
    files += [str((REPO / f).resolve()) for f in
              (grid.get("model_config_files") or {}).get(cell["model"], [])]
    if files:
        cmd.append(f"--config_files={' '.join(files)}")
    for key, value in config.items():
        # The text the run's Config reads back as exactly this value (literals only).
        try:
            text = format_literal(value)
        except ValueError as err:
            raise ValueError(f"grid cell {cell['id']}: config key {key!r}: {err}") from None
        cmd.append(f"--{key}={text}")
    return cmd


def run_cell(grid: dict, cell: dict, out_dir: Path, timeout: float | None) -> dict:
    cell_dir = out_dir / "cells"
    cell_dir.mkdir(parents=True, exist_ok=True)
    result_file = cell_dir / f"{cell['id']}.json"
    err_file = cell_dir / f"{cell['id']}.err"
    if result_file.is_file():
        return {**cell, "status": "cached", "result": json.loads(result_file.read_text())}
    cmd = cell_command(grid, cell, result_file)
    start = time.time()
    try:
        proc = subprocess.run(cmd, cwd=out_dir, capture_output=True, text=True, timeout=timeout)
        ok, log = proc.returncode == 0 and result_file.is_file(), proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        ok, log = False, f"timed out after {timeout} s\n{err.stdout or ''}{err.stderr or ''}"
    if not ok:
        err_file.write_text(" ".join(cmd) + "\n\n" + log[-8000:])
        return {**cell, "status": "failed", "error": _last_error(log), "command": cmd}
    err_file.unlink(missing_ok=True)
    return {**cell, "status": f"ran in {time.time() - start:.0f} s",
            "result": json.loads(result_file.read_text()), "command": cmd}


def _last_error(log: str) -> str:
    lines = [l for l in log.strip().splitlines() if l.strip()]
    errors = [l for l in lines if "Error" in l or "error" in l]
    return (errors or lines or ["no output"])[-1][:300]


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def subsets_of(results: list[dict]) -> list[str]:
    seen = []
    for res in results:
        for subset in res["result"]["test"]:
            if subset not in seen:
                seen.append(subset)
    return seen


def write_page(grid: dict, outcomes: list[dict], page: Path, grid_path: Path) -> None:
    out_dir = page.parent
    lines = [f"# Results: grid `{grid['name']}`", "",
             f"Command: `python benchmarks/run.py {grid_path} --output={page}`", "",
             "Each cell: `python run_recbole_cdsr.py --model=M --dataset=D --seed=S ...` "
             "(the full command of every cell is in its JSON under cells/). Test metrics, "
             "mean ± sample std over seeds; the model is selected on the validation split.", ""]
    paper = grid.get("paper") or {}
    for dataset in grid["datasets"]:
        done = [o for o in outcomes if o["dataset"] == dataset and "result" in o]
        lines += [f"## {dataset}", ""]
        if not done:
            lines += ["No finished cell.", ""]
            continue
        subsets = subsets_of(done)
        for metric in grid["metrics"]:
            header = ["model", *subsets]
            lines += [f"**{metric}** (test)", "", "| " + " | ".join(header) + " |",
                      "|" + "---|" * len(header)]
            for model in grid["models"]:
                rows = [o for o in done if o["model"] == model]
                if not rows:
                    continue
                cellsv = [mean_std([o["result"]["test"][s][metric] for o in rows
                                    if metric in o["result"]["test"].get(s, {})]) for s in subsets]
                lines.append(f"| {model} | " + " | ".join(cellsv) + " |")
                ref = (paper.get(dataset) or {}).get(model)
                if ref:
                    lines.append(f"| {model} (paper) | " + " | ".join(
                        f"{ref[s][metric]:.4f}" if metric in ref.get(s, {}) else "–"
                        for s in subsets) + " |")
            lines.append("")
        counts = {s: done[0]["result"]["test"][s].get("n") for s in subsets}
        lines += ["Rows per subset: " + ", ".join(f"{s} {n}" for s, n in counts.items()), ""]
        time_rows = ["| model | epochs | s / epoch | test eval s |", "|---|---|---|---|"]
        for model in grid["models"]:
            rows = [o["result"]["time"] for o in done if o["model"] == model]
            if rows:
                per_epoch = [t["train_s"] / max(t["epochs"], 1) for t in rows]
                time_rows.append(f"| {model} | {mean_std([t['epochs'] for t in rows])} | "
                                 f"{mean_std(per_epoch)} | {mean_std([t['eval_s'] for t in rows])} |")
        lines += ["Time (training wall time includes validation):", "", *time_rows, ""]
        for png in plot_dataset(grid, dataset, done, out_dir):
            lines += [f"![{png.stem}]({png.name})", ""]
    failed = [o for o in outcomes if o["status"] == "failed"]
    lines += ["## Cells", "", "| cell | status |", "|---|---|"]
    for o in outcomes:
        status = o["status"] if o["status"] != "failed" else f"**failed**: {o['error']} (log: cells/{o['id']}.err)"
        lines.append(f"| {o['id']} | {status} |")
    lines += ["", f"{len(failed)} of {len(outcomes)} cells failed.", "", "## Environment", ""]
    lines += [f"- {k}: {v}" for k, v in environment().items()]
    page.write_text("\n".join(lines) + "\n")


def environment() -> dict:
    import recbole
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__,
           "recbole": recbole.__version__, "numpy": np.__version__,
           "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
                      f"{__import__('os').cpu_count()} cores",
           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"}
    try:
        env["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                       capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    return env


def plot_dataset(grid: dict, dataset: str, done: list[dict], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in grid["models"] if any(o["model"] == m for o in done)]
    subsets = [s for s in subsets_of(done) if s == "all" or s in _domains(done)]
    metric = grid["metrics"][0]
    paths = []

    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(subsets) * len(models) / 2 + 2), 3.2))
    width = 0.8 / max(len(models), 1)
    for i, model in enumerate(models):
        rows = [o for o in done if o["model"] == model]
        means = [np.mean([o["result"]["test"].get(s, {}).get(metric, np.nan) for o in rows]) for s in subsets]
        ax.bar(np.arange(len(subsets)) + i * width, means, width, label=model)
    ax.set_xticks(np.arange(len(subsets)) + width * (len(models) - 1) / 2, subsets)
    ax.legend(fontsize=8)
    paths.append(_save(fig, ax, f"{dataset}: {metric} per domain", f"test {metric}",
                       out_dir / f"{dataset}_{metric.replace('@', '_at_')}_per_domain.png"))

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for model in models:
        for o in [o for o in done if o["model"] == model][:1]:
            curve = o["result"].get("valid_curve") or []
            if curve:
                ax.plot([c[0] + 1 for c in curve], [c[1] for c in curve], "o-", label=model)
    ax.set_xlabel("epoch")
    ax.legend(fontsize=8)
    paths.append(_save(fig, ax, f"{dataset}: training curves (first seed)", "valid score",
                       out_dir / f"{dataset}_training_curves.png"))

    fig, ax = plt.subplots(figsize=(5, 3.2))
    per_epoch = [np.mean([o["result"]["time"]["train_s"] / max(o["result"]["time"]["epochs"], 1)
                          for o in done if o["model"] == m]) for m in models]
    ax.bar(models, per_epoch, color="tab:gray")
    paths.append(_save(fig, ax, f"{dataset}: time per epoch", "seconds per epoch",
                       out_dir / f"{dataset}_time_per_epoch.png"))
    return paths


def _save(fig, ax, title: str, ylabel: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    ax.set_title(title)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _domains(done: list[dict]) -> set[str]:
    return {d for o in done for d in o["result"].get("domains", [])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run a benchmark grid, write a results page")
    parser.add_argument("grid", type=Path)
    parser.add_argument("--output", type=Path, required=True, help="results page (.md)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per cell")
    args = parser.parse_args(argv)
    grid = load_grid(args.grid)
    page = args.output.resolve()
    page.parent.mkdir(parents=True, exist_ok=True)
    outcomes = []
    for cell in cells(grid):
        outcome = run_cell(grid, cell, page.parent, args.timeout)
        print(f"{cell['id']}: {outcome['status']}", flush=True)
        outcomes.append(outcome)
    write_page(grid, outcomes, page, args.grid)
    print(f"page: {page}")
    return 1 if any(o["status"] == "failed" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
