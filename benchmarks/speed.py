"""Speed of each model against SASRec in the same run, and how cost grows.

    python benchmarks/speed.py --models SASRec GRU4Rec BERT4Rec --scales 1 2 4 \
        --output=docs/speed_cpu.md [--steps=20] [--batch=256] [--users=4000]

For each scale s a synthetic two-domain dataset is written with s x the catalogue
(``--items``) and s x the sequence length (``--seq_len``); every model is built through
the normal pipeline at its default config and timed on the same batches:

* training samples per second (``calculate_loss`` + backward + Adam step) and the
  implied seconds per epoch of the synthetic train split;
* evaluation users per second with full sort and per-domain masking (CDSRTrainer);
* peak GPU memory (CUDA only).

Each figure is also given as a ratio to SASRec at the same scale. Timings are medians
over ``--steps`` batches after ``--warmup`` batches.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_synthetic(root: Path, name: str, users: int, items: int, seq_len: int, seed: int) -> None:
    """Two domains (items split in half), each user a mixed sequence of ``seq_len + 2``."""
    rng = np.random.default_rng(seed)
    length = seq_len + 2
    popularity = 1.0 / np.arange(1, items + 1) ** 0.8
    seqs = rng.choice(items, size=(users, length), p=popularity / popularity.sum())
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    domain = np.where(np.arange(items) < items // 2, "a", "b")
    tokens = np.char.add(np.char.add(domain, "_"), np.arange(items).astype(str))
    inter = pd.DataFrame({
        "user_id:token": np.repeat(np.arange(users), length),
        "item_id:token": tokens[seqs.ravel()],
        "timestamp:float": np.tile(np.arange(length), users),
    })
    inter.to_csv(folder / f"{name}.inter", sep="\t", index=False)
    pd.DataFrame({"item_id:token": tokens, "item_domain:token": domain}).to_csv(
        folder / f"{name}.item", sep="\t", index=False)


def build(model_name: str, name: str, data_path: Path, seq_len: int, batch: int, device: str):
    from recbole.utils import init_seed

    from recbole_cdsr.config import Config
    from recbole_cdsr.utils import create_dataset, data_preparation, get_model, get_trainer

    config = Config(model_name, name, config_dict={
        "data_path": str(data_path), "MAX_ITEM_LIST_LENGTH": seq_len,
        "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "item_domain"]},
        "train_batch_size": batch, "eval_batch_size": batch, "state": "ERROR",
        "use_gpu": device == "cuda", "show_progress": False, "checkpoint_dir": tempfile.mkdtemp(),
    })
    init_seed(config["seed"], True)
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    model = get_model(model_name)(config, train._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], model_name)(config, model)
    return config, train, test, model, trainer


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_model(model_name, name, data_path, seq_len, batch, device, steps, warmup) -> dict:
    config, train, test, model, trainer = build(model_name, name, data_path, seq_len, batch, device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = []
    for interaction in train:
        batches.append(interaction)
        if len(batches) == steps + warmup:
            break
    model.train()
    step_times, sizes = [], []
    for i, interaction in enumerate(batches):
        interaction = interaction.to(config["device"])
        sync(device)
        start = time.perf_counter()
        loss = model.calculate_loss(interaction)
        loss = sum(loss) if isinstance(loss, tuple) else loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sync(device)
        if i >= warmup:
            step_times.append(time.perf_counter() - start)
            sizes.append(len(interaction))
    train_rate = statistics.median(n / t for n, t in zip(sizes, step_times))
    # evaluation: full sort + domain mask through the trainer, as in a real run
    trainer.eval_collector.bind(test._dataset)
    trainer.tot_item_num = test._dataset.item_num
    model.eval()
    eval_times, eval_sizes = [], []
    with torch.no_grad():
        for i, batched in enumerate(test):
            sync(device)
            start = time.perf_counter()
            trainer._full_sort_batch_eval(batched)
            sync(device)
            if i >= 1 or len(test) == 1:
                eval_times.append(time.perf_counter() - start)
                eval_sizes.append(len(batched[0]))
            if len(eval_times) >= steps:
                break
    return {
        "train_samples_per_s": train_rate,
        "s_per_epoch": len(train.dataset) / train_rate,
        "eval_users_per_s": sum(eval_sizes) / sum(eval_times),
        "peak_mem_mib": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
        "train_rows": len(train.dataset),
        "n_items": test._dataset.item_num - 1,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["SASRec", "GRU4Rec", "BERT4Rec"])
    parser.add_argument("--scales", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--users", type=int, default=4000)
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--seq_len", type=int, default=50)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]  # RecBole's Config reads argv
    models = ["SASRec"] + [m for m in args.models if m != "SASRec"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scale in args.scales:
            name = f"synth_s{scale}"
            seq_len = args.seq_len * scale
            write_synthetic(Path(tmp), name, args.users, args.items * scale, seq_len, seed=scale)
            base = None
            for model in models:
                try:
                    res = time_model(model, name, Path(tmp), seq_len, args.batch, args.device,
                                     args.steps, args.warmup)
                except Exception as err:  # noqa: BLE001 - a failing model is a row, not a crash
                    rows.append({"scale": scale, "model": model, "error": f"{type(err).__name__}: {err}"})
                    continue
                base = res if model == "SASRec" else base
                rows.append({"scale": scale, "model": model, **res, "base": base})
                print(f"scale {scale} {model}: {res}", flush=True)
    write_table(args, rows)


def write_table(args, rows) -> None:
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    lines = [f"# Speed: {', '.join(args.models)} vs SASRec", "",
             f"Command: `python benchmarks/speed.py --models {' '.join(args.models)} --scales "
             f"{' '.join(map(str, args.scales))} --users {args.users} --items {args.items} --seq_len "
             f"{args.seq_len} --batch {args.batch} --steps {args.steps} --output={args.output}`", "",
             f"Device: {device}; torch {torch.__version__}. Scale s: s x {args.items} items, "
             f"s x {args.seq_len} sequence length, {args.users} users. Ratios are to SASRec at the "
             "same scale, as time ratios (2.00 = takes twice SASRec's time).", "",
             "| scale | model | train samples/s | s/epoch (synthetic) | train time / SASRec | eval users/s "
             "| eval time / SASRec | peak GPU MiB |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['scale']} | {r['model']} | failed: {r['error'][:120]} | | | | | |")
            continue
        b = r["base"] or r
        mem = f"{r['peak_mem_mib']:.0f}" if r["peak_mem_mib"] is not None else "–"
        lines.append(
            f"| {r['scale']} | {r['model']} | {r['train_samples_per_s']:.0f} | {r['s_per_epoch']:.1f} | "
            f"{b['train_samples_per_s'] / r['train_samples_per_s']:.2f} | {r['eval_users_per_s']:.0f} | "
            f"{b['eval_users_per_s'] / r['eval_users_per_s']:.2f} | {mem} |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")
    print(f"written {args.output}")


if __name__ == "__main__":
    main()
