"""Markdown table of run_recbole_cdsr result JSONs: test metrics overall, per domain and
per group (subsets without a '.'), plus training seconds per epoch.

    python benchmarks/results_table_syncrec.py SASRec_fk.json SyNCRec_fk.json
"""

from __future__ import annotations

import json
import sys

PREFERRED = ("hit@1", "hit@5", "hit@10", "hit@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr@10")


def main(paths: list[str]) -> None:
    results = [json.load(open(path)) for path in paths]
    metrics = [m for m in PREFERRED if m in results[0]["test"]["all"]]
    print("| model | subset | n | " + " | ".join(metrics) + " | train s/epoch |")
    print("|---|---|---|" + "---|" * (len(metrics) + 1))
    for result in results:
        per_epoch = result["time"]["train_s"] / max(result["time"]["epochs"], 1)
        for subset, row in result["test"].items():
            if "." in subset:
                continue
            cells = " | ".join(f"{row[m]:.4f}" if m in row else "" for m in metrics)
            print(f"| {result['model']} | {subset} | {row.get('n', '')} | {cells} "
                  f"| {per_epoch:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
