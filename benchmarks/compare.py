"""Fair comparison: every model trained to early stopping on validation, each with the best of
its own small learning-rate x batch-size search, on one dataset (or a documented user slice).

    python benchmarks/compare.py --dataset=beauty --users=2000 \
        --models ADARec SASRec GRU4Rec Pop --lrs 0.001 0.003 --batches 256 \
        --config "{'hidden_size': 64, 'stopping_step': 5}" --output=out/adarec_beauty2000

Per model, every (lr, batch) is trained with the model's own trainer until ``valid_metric``
has not improved for ``stopping_step`` evaluations (at most ``--epochs``); the setting with the
best validation score is the model's row, read on test once (its best checkpoint). Pop is
trained once. Writes ``<output>.json`` (every run) and ``<output>.md`` (the table: test per
domain, selection on valid, epochs, process CPU seconds and wall seconds of the whole search;
then test HR@10 / NDCG@10 of every model on every domain, user/row group and domain x group).

``--users N`` runs on a slice of N users per split file: the first N by id, or with
``--slice_seed S`` a seeded uniform sample (``data/slice.py``; a slice that loses a domain's
training targets is refused).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recbole_cdsr.literal import parse_literal  # noqa: E402
from recbole_cdsr.quick_start import run_recbole_cdsr  # noqa: E402
from recbole_cdsr.utils import PROPERTIES, default_data_path  # noqa: E402


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, help="a registered or converted dataset")
    parser.add_argument("--users", type=int, default=None,
                        help="slice: N users of each inter file (the first by id)")
    parser.add_argument("--slice_seed", type=int, default=None,
                        help="with --users: a seeded uniform sample of users instead of the "
                             "first by id (needed where ids encode a group, e.g. food_kitchen)")
    parser.add_argument("--data_path", default=None, help="where datasets live")
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--lrs", nargs="+", type=float, default=[0.001])
    parser.add_argument("--batches", nargs="+", type=int, default=[256])
    parser.add_argument("--epochs", type=int, default=200, help="upper bound per run")
    parser.add_argument("--config", default="{}", help="a dict literal applied to every run")
    parser.add_argument("--model_config", default="{}",
                        help="{model: {key: value}} applied to one model's runs")
    parser.add_argument("--config_files", nargs="*", default=[], help="yaml files for every run")
    parser.add_argument("--output", required=True, help="path stem of the .json and .md")
    return parser.parse_args(argv)


def prepare(args) -> tuple[str, str, list[str]]:
    """(dataset name to run, data_path, config files): the slice is written on first use."""
    data_path = Path(args.data_path or default_data_path())
    files = [str(PROPERTIES / "dataset" / f"{args.dataset}.yaml")]
    files = [f for f in files if Path(f).is_file()] + list(args.config_files)
    if args.users is None:
        return args.dataset, str(data_path), files
    from recbole_cdsr.data.registry import DATASETS, prepare_dataset
    from recbole_cdsr.data.slice import write_user_slice

    if args.dataset in DATASETS:
        prepare_dataset(args.dataset, data_path)
    name = f"{args.dataset}_first{args.users}"
    if args.slice_seed is not None:
        name = f"{args.dataset}_sample{args.users}_seed{args.slice_seed}"
    if not (data_path / name).is_dir():
        write_user_slice(data_path / args.dataset, data_path, name, args.users, args.slice_seed)
    return name, str(data_path), files


def main(argv=None) -> None:
    args = parse_args(argv)
    command = "python benchmarks/compare.py " + " ".join(sys.argv[1:] if argv is None else argv)
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value from argv: ours are not config
    name, data_path, files = prepare(args)
    common = parse_literal(args.config)
    per_model = parse_literal(args.model_config)
    runs, rows = [], []
    for model in args.models:
        grid = [(None, None)] if model == "Pop" else [
            (lr, batch) for lr in args.lrs for batch in args.batches]
        cpu0, wall0, best = cpu_seconds(), time.time(), None
        for lr, batch in grid:
            config = {"data_path": data_path, "epochs": 1 if model == "Pop" else args.epochs,
                      "show_progress": False, **common, **per_model.get(model, {})}
            if lr is not None:
                config.update(learning_rate=lr, train_batch_size=batch)
            cpu, wall = cpu_seconds(), time.time()
            result = run_recbole_cdsr(model, name, files, config)
            run = {"model": model, "learning_rate": lr, "train_batch_size": batch,
                   "epochs": result["time"]["epochs"], "best_valid_score": result["best_valid_score"],
                   "valid": result["valid"], "test": result["test"],
                   "cpu_s": round(cpu_seconds() - cpu, 1), "wall_s": round(time.time() - wall, 1),
                   "valid_metric": result["config"]["valid_metric"]}
            runs.append(run)
            print(json.dumps({k: run[k] for k in ("model", "learning_rate", "train_batch_size",
                                                  "epochs", "best_valid_score", "cpu_s")}),
                  flush=True)
            if best is None or run["best_valid_score"] > best["best_valid_score"]:
                best = run
        rows.append({**best, "search_cpu_s": round(cpu_seconds() - cpu0, 1),
                     "search_wall_s": round(time.time() - wall0, 1), "n_settings": len(grid)})
        write(args, command, name, files, common, per_model, runs, rows)


def write(args, command, name, files, common, per_model, runs, rows) -> None:
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"runs": runs, "rows": rows}, indent=1) + "\n")
    subsets = [s for s in rows[0]["test"] if s == "mean" or s not in ("all",)][:8]
    subsets = ["all"] + [s for s in subsets if "." not in s]
    head = ["model", "lr", "batch", "epochs", f"valid {rows[0]['valid_metric']}"]
    head += [f"{s} HR@10 / NDCG@10" for s in subsets] + ["CPU s (search)", "wall s (search)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["model"], str(row["learning_rate"] or "–"), str(row["train_batch_size"] or "–"),
                 str(row["epochs"]), f"{row['best_valid_score']:.4f}"]
        for s in subsets:
            part = row["test"].get(s, {})
            cells.append(f"{part.get('hit@10', float('nan')):.4f} / "
                         f"{part.get('ndcg@10', float('nan')):.4f}")
        cells += [str(row["search_cpu_s"]), str(row["search_wall_s"])]
        lines.append("| " + " | ".join(cells) + " |")
    text = (f"Dataset `{name}`; test metrics of each model's best setting by validation; "
            f"config files {[Path(f).name for f in files]}, common config {common}, per-model "
            f"{per_model}.\n\n" + "\n".join(lines) + "\n\n" + subset_table(rows)
            + f"\n\nCommand: `{command}`\n")
    out.with_suffix(".md").write_text(text)


def subset_table(rows: list[dict]) -> str:
    """Test HR@10 / NDCG@10 of every model's selected run on every subset (overall, each
    domain, the mean over domains, each group and each domain x group), rows = subsets."""
    subsets = []
    for row in rows:
        subsets += [s for s in row["test"] if s not in subsets]
    head = ["test subset", "n"] + [f"{row['model']} HR@10 / NDCG@10" for row in rows]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for subset in subsets:
        n = next((row["test"][subset].get("n") for row in rows if subset in row["test"]), None)
        cells = [subset, "" if n is None else str(n)]
        for row in rows:
            part = row["test"].get(subset, {})
            cells.append(f"{part['hit@10']:.4f} / {part['ndcg@10']:.4f}"
                         if "hit@10" in part and "ndcg@10" in part else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
