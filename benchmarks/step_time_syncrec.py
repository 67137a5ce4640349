"""Seconds per training step of SyNCRec vs SASRec at the same batch (CPU or GPU).

Both models take the same real batches (the same rows of the dataset's train split,
RecBole's prefix rows, padded to MAX_ITEM_LIST_LENGTH) and run calculate_loss, backward
and an Adam step. SASRec uses its RecBole defaults (CE over all items); SyNCRec its
SyNCRec.yaml defaults (D+1 tasks, K experts, next-item loss at every position, SC-MIM).

    python benchmarks/step_time_syncrec.py --dataset food_kitchen --batch 128 --steps 20

Prints one JSON line per model and the ratio; no asserts (timings depend on the machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from recbole_cdsr.config import Config
from recbole_cdsr.utils import create_dataset, data_preparation, get_model


def time_model(name, dataset_name, batches, overrides, dataset, warmup):
    config = Config(name, dataset_name, config_dict={**overrides, "state": "ERROR"})
    torch.manual_seed(0)
    model = get_model(name)(config, dataset).to(config["device"])
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for i, batch in enumerate(batches):
        batch = batch.to(config["device"])
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        losses = model.calculate_loss(batch)
        loss = sum(losses) if isinstance(losses, tuple) else losses
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return {
        "model": name,
        "median_s": round(statistics.median(times), 4),
        "mean_s": round(statistics.mean(times), 4),
        "steps": len(times),
        "params": sum(p.numel() for p in model.parameters()),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="food_kitchen")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--syncrec", default="{}", help="JSON config overrides for SyNCRec")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    common = {"train_batch_size": args.batch, "seed": 0}
    # One dataset (CDSRDataset, prefix rows) feeds both models the same batches.
    config = Config("SASRec", args.dataset, config_dict={**common, "state": "ERROR"})
    dataset = create_dataset(config)
    train, _, _ = data_preparation(config, dataset)
    batches = []
    for batch in train:
        batches.append(batch)
        if len(batches) == args.steps + args.warmup:
            break
    results = [
        time_model("SASRec", args.dataset, batches, common, train._dataset, args.warmup),
        time_model("SyNCRec", args.dataset, batches, {**common, **json.loads(args.syncrec)},
                   train._dataset, args.warmup),
    ]
    meta = {"dataset": args.dataset, "batch": args.batch, "threads": torch.get_num_threads(),
            "device": "cuda" if torch.cuda.is_available() else "cpu", "torch": torch.__version__}
    for r in results:
        print(json.dumps({**meta, **r}))
    ratio = results[1]["median_s"] / results[0]["median_s"]
    print(json.dumps({**meta, "syncrec_over_sasrec": round(ratio, 2)}))


if __name__ == "__main__":
    sys.exit(main())
