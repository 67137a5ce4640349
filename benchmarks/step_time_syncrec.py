"""Seconds per training step of SyNCRec vs SASRec at the same batch (CPU or GPU).

Both models take the same real batches (the same rows of the dataset's train split,
RecBole's prefix rows, padded to MAX_ITEM_LIST_LENGTH) and run calculate_loss, backward
and an Adam step. SASRec uses its RecBole defaults (CE over all items); SyNCRec its
SyNCRec.yaml defaults (D+1 tasks, K experts, next-item loss at every position, SC-MIM).

    python benchmarks/step_time_syncrec.py --dataset food_kitchen --batch 128 --steps 20

Steps alternate between the two models (same load for both on a shared machine); wall
and process-CPU seconds are reported (with --threads 1, CPU seconds measure the work).
Prints one JSON line per model and the ratios; no asserts (timings depend on the machine).
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


def build(name, dataset_name, overrides, dataset):
    config = Config(name, dataset_name, config_dict={**overrides, "state": "ERROR"})
    torch.manual_seed(0)
    model = get_model(name)(config, dataset).to(config["device"])
    model.train()
    return model, torch.optim.Adam(model.parameters(), lr=1e-3), config["device"]


def train_step(model, optimizer, batch):
    """One step; returns (wall seconds, process CPU seconds)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    losses = model.calculate_loss(batch)
    loss = sum(losses) if isinstance(losses, tuple) else losses
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


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
    # Importing any RecBole sequential model runs recbole/model/sequential_recommender/
    # sine.py, which calls torch.autograd.set_detect_anomaly(True) for the whole process
    # (a NaN check after every backward op). Time both models without it.
    anomaly = torch.is_anomaly_enabled()
    models = {
        "SASRec": build("SASRec", args.dataset, common, train._dataset),
        "SyNCRec": build("SyNCRec", args.dataset, {**common, **json.loads(args.syncrec)},
                         train._dataset),
    }
    torch.autograd.set_detect_anomaly(False)
    # Steps alternate between the models, so both see the same machine load.
    times = {name: [] for name in models}
    for i, batch in enumerate(batches):
        for name, (model, optimizer, device) in models.items():
            measured = train_step(model, optimizer, batch.to(device))
            if i >= args.warmup:
                times[name].append(measured)
    results = []
    for name, measured in times.items():
        walls, cpus = zip(*measured)
        results.append({
            "model": name, "median_wall_s": round(statistics.median(walls), 4),
            "median_cpu_s": round(statistics.median(cpus), 4), "steps": len(walls),
            "params": sum(p.numel() for p in models[name][0].parameters()),
        })
    meta = {"dataset": args.dataset, "batch": args.batch, "threads": torch.get_num_threads(),
            "device": "cuda" if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
            "anomaly_mode_was_on": anomaly}
    for r in results:
        print(json.dumps({**meta, **r}))
    ratio = {
        f"syncrec_over_sasrec_{kind}": round(
            results[1][f"median_{kind}_s"] / results[0][f"median_{kind}_s"], 2
        )
        for kind in ("wall", "cpu")
    }
    print(json.dumps({**meta, **ratio}))


if __name__ == "__main__":
    sys.exit(main())
