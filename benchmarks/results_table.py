"""Markdown table of run_recbole_cdsr result JSONs: test metrics overall, per domain and
per group (subsets without a '.'), plus training seconds per epoch.

    python benchmarks/results_table.py SASRec_fk.json SyNCRec_fk.json
    python benchmarks/results_table.py --metrics hit@10,ndcg@10 SASRec_home.json SeeDRec_home.json

Without --metrics every metric of the first file's "all" row is shown, grouped by name
and ordered by cut-off.
"""

from __future__ import annotations

import argparse
import json


def metric_order(name: str) -> tuple:
    base, _, k = name.partition("@")
    return base, int(k) if k.isdigit() else 0


def table(results: list[dict], metrics: list[str] | None = None) -> str:
    if not metrics:
        metrics = sorted((m for m in results[0]["test"]["all"] if m != "n"), key=metric_order)
    lines = ["| model | subset | n | " + " | ".join(metrics) + " | train s/epoch |",
             "|---|---|---|" + "---|" * (len(metrics) + 1)]
    for result in results:
        per_epoch = result["time"]["train_s"] / max(result["time"]["epochs"], 1)
        for subset, row in result["test"].items():
            if "." in subset:
                continue
            cells = " | ".join(f"{row[m]:.4f}" if m in row else "" for m in metrics)
            lines.append(f"| {result['model']} | {subset} | {row.get('n', '')} | {cells} "
                         f"| {per_epoch:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="result JSON files (--result_file)")
    parser.add_argument("--metrics", default="", help="comma-separated metric keys")
    args = parser.parse_args(argv)
    results = [json.load(open(path)) for path in args.results]
    print(table(results, [m for m in args.metrics.split(",") if m]))


if __name__ == "__main__":
    main()
