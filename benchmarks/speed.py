"""Training-step cost of each model against SASRec, measured in one process.

    python benchmarks/speed.py --models ADARec I2VAE SyNCRec LLMCDSR SeeDRec \
        --steps 10 --max_users 2000 --output=docs/results/speed.md
    python benchmarks/speed.py --models SASRec --sasrec_variants --dataset beauty --steps 24

Each model runs on its paper dataset with its experiment config
(``properties/experiment/<Model>-<dataset>.yaml``, see ``SETUPS``), its own dataset
class, loader (``data_preparation``: length buckets where the model allows them) and
trainer; one step is ``trainer._train_epoch([batch])`` (the trainer's own optimiser,
loss hooks and clipping). SASRec is built on the same dataset with the same batch size
and MAX_ITEM_LIST_LENGTH, and its steps alternate with the model's (same machine load).

Reported per model and per SASRec: process CPU seconds and wall seconds per step
(mean over ``--steps`` steps after ``--warmup``), per epoch (steps per epoch x mean
step; the batches are the loader's first ones, in its shuffled order), the ratio to
SASRec (per step and per epoch), the matmul GFLOP per step (torch.utils.flop_counter,
forward + backward, counted again on the first three timed batches) and the achieved
GFLOP/s (those FLOPs over those steps' wall time) against a measured float32 matmul peak.

``--sasrec_variants`` times SASRec four ways on one dataset instead: stock (RecBole's
loader, RecBole's erf GELU and dropout), fused layers only, length buckets only, both
(the default). ``--eval`` also times full-sort evaluation of the test split: RecBole's
Trainer against CDSRTrainer (domain mask and per-domain metrics), interleaved.

``--max_users K`` keeps the first K users of every ``.inter`` file (a copy under a
temporary data_path, the dataset renamed ``<dataset>_u<K>``), so that data loading and
the models' preparation stages take minutes; epochs are then epochs of the slice.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recbole_cdsr import _compat  # noqa: E402
from recbole_cdsr.utils import PROPERTIES, default_data_path  # noqa: E402

# model -> (paper dataset, experiment yaml or None, benchmark-only keys). The extra keys
# shorten preparation stages that run before training and do not change the step
# (LLMCDSR: weight-free text encoder of the same width, one pre-training epoch).
SETUPS = {
    "SASRec": ("beauty", None, {}),
    "ADARec": ("beauty", "ADARec-beauty.yaml", {}),
    "I2VAE": ("cloth_sport", "I2VAE-cloth_sport.yaml", {}),
    "SyNCRec": ("amazon5", "SyNCRec-amazon5.yaml", {}),
    "LLMCDSR": ("food_kitchen", "LLMCDSR-food_kitchen.yaml",
                {"text_encoder": "hashing-384", "pretrain_epochs": 1}),
    "SeeDRec": ("home", "SeeDRec-home.yaml", {}),
}
FLOP_STEPS = 3  # timed steps whose FLOPs are counted (again, untimed) for GFLOP/s
SASREC_VARIANTS = {  # name -> (length_buckets, fused layers)
    "stock": (False, False),
    "fused": (False, True),
    "buckets": (True, False),
    "buckets+fused": (True, True),
}


def slice_users(dataset: str, max_users: int, root: Path) -> tuple[str, Path]:
    """Writes ``dataset`` with the first ``max_users`` users of each ``.inter`` file
    (``recbole_cdsr.data.slice.write_user_slice``) under ``root`` as ``<dataset>_u<K>``.

    Returns:
        (new dataset name, new data_path root).
    """
    from recbole_cdsr.data.registry import DATASETS, prepare_dataset
    from recbole_cdsr.data.slice import write_user_slice
    from recbole_cdsr.data.sources import RawSource

    src = default_data_path() / dataset
    if dataset in DATASETS:  # converted on first use, as a run would
        prepare_dataset(dataset, src.parent, RawSource())
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is missing: no atomic files for dataset {dataset!r}")
    name = f"{dataset}_u{max_users}"
    write_user_slice(src, root, name, max_users)
    return name, root


def build(model: str, dataset: str, config_files: list[str], keys: dict, fused: bool,
          shared: dict | None = None):
    """Config, loaders, model and trainer exactly as a run builds them. With ``shared``
    (a SASRec run on the same data) only the train loader is rebuilt, bucketed or
    RecBole's as ``length_buckets`` says."""
    from recbole.data.dataloader import TrainDataLoader
    from recbole.utils import init_seed

    from recbole_cdsr.config import Config
    from recbole_cdsr.data.bucketing import LengthBucketTrainDataLoader
    from recbole_cdsr.utils import create_dataset, data_preparation, get_model, get_trainer

    config = Config(model, dataset, config_files, {
        "state": "ERROR", "show_progress": False, "checkpoint_dir": tempfile.mkdtemp(), **keys,
    })
    init_seed(config["seed"], config["reproducibility"])
    if shared is None:
        train, _, test = data_preparation(config, create_dataset(config))
    else:
        loader = LengthBucketTrainDataLoader if config["length_buckets"] else TrainDataLoader
        train = loader(config, shared["train"]._dataset, shared["train"]._sampler, shuffle=True)
        test = shared["test"]
    init_seed(config["seed"], config["reproducibility"])
    with fused_layers(fused):
        net = get_model(model)(config, train._dataset).to(config["device"])
        trainer = get_trainer(config["MODEL_TYPE"], model)(config, net)
    return {"config": config, "train": train, "test": test, "model": net, "trainer": trainer,
            "fused": fused, "batches": iter(train)}


@contextlib.contextmanager
def fused_layers(enabled: bool):
    _compat.use_fused_layers(enabled)
    try:
        yield
    finally:
        _compat.use_fused_layers(True)


def next_batch(run):
    try:
        return next(run["batches"])
    except StopIteration:
        run["batches"] = iter(run["train"])
        return next(run["batches"])


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step(run, batch) -> tuple[float, float]:
    """One training step through the trainer; returns (wall s, process CPU s)."""
    device = run["config"]["device"]
    batch = batch.to(device)
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    with fused_layers(run["fused"]):
        run["trainer"]._train_epoch([batch], 0)
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def step_gflop(run, batches: list) -> float:
    """Matmul GFLOP of a training step (forward + backward), mean over ``batches``."""
    with FlopCounterMode(display=False) as counter:
        for batch in batches:
            step(run, batch)
    return counter.get_total_flops() / 1e9 / len(batches)


def matmul_peak(device, size: int = 2048, repeats: int = 5) -> float:
    """Measured float32 matmul GFLOP/s of this process (best of ``repeats``)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def time_runs(runs: dict, steps: int, warmup: int) -> dict:
    """Alternates one step of every run, ``warmup + steps`` rounds."""
    times = {name: [] for name in runs}
    for i in range(warmup + steps):
        for name, run in runs.items():
            batch = next_batch(run)
            measured = step(run, batch)
            if i >= warmup:
                times[name].append(measured)
                if len(run.setdefault("flop_batches", [])) < FLOP_STEPS:
                    run["flop_batches"].append(batch)
    out = {}
    for name, run in runs.items():
        walls, cpus = zip(*times[name])
        # GFLOP/s from the same batches' FLOPs and wall time (bucketed widths differ)
        gflop = step_gflop(run, run["flop_batches"])
        flop_wall = sum(walls[: len(run["flop_batches"])])
        per_epoch = len(run["train"])
        out[name] = {
            "wall_s": statistics.mean(walls), "cpu_s": statistics.mean(cpus),
            "steps_per_epoch": per_epoch, "epoch_wall_s": per_epoch * statistics.mean(walls),
            "epoch_cpu_s": per_epoch * statistics.mean(cpus),
            "batch": run["config"]["train_batch_size"], "width": run["config"]["MAX_ITEM_LIST_LENGTH"],
            "rows": len(run["train"]._dataset), "gflop": gflop,
            "gflops": gflop * len(run["flop_batches"]) / flop_wall,
        }
    return out


def eval_overhead(run, rounds: int) -> dict:
    """Process CPU seconds of RecBole's Trainer.evaluate vs CDSRTrainer.evaluate on the
    test split (same model), interleaved; medians over ``rounds``."""
    from recbole.trainer import Trainer

    stock = Trainer(run["config"], run["model"])
    ours = run["trainer"]
    times = {"recbole": [], "cdsr": []}
    for i in range(rounds + 1):
        for name, trainer in (("recbole", stock), ("cdsr", ours)):
            start = time.process_time()
            trainer.evaluate(run["test"], load_best_model=False)
            if i:
                times[name].append(time.process_time() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"recbole_s": med["recbole"], "cdsr_s": med["cdsr"], "ratio": med["cdsr"] / med["recbole"],
            "rows": len(run["test"]._dataset), "rounds": rounds}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SETUPS))
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--max_users", type=int, default=0, help="first K users only (0: all)")
    parser.add_argument("--sasrec_variants", action="store_true",
                        help="time SASRec stock / fused / buckets / both instead")
    parser.add_argument("--dataset", default=None, help="dataset for --sasrec_variants")
    parser.add_argument("--eval", type=int, default=0, metavar="ROUNDS",
                        help="also time full-sort test evaluation, RecBole vs ours")
    parser.add_argument("--same_width", action="store_true",
                        help="give SASRec the model's hidden_size and inner_size too")
    parser.add_argument("--config", type=json.loads, default={},
                        help='JSON config keys for every run, e.g. \'{"train_batch_size": 256}\'')
    parser.add_argument("--output", type=Path, default=None, help="markdown table")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    unknown = [m for m in args.models if m not in SETUPS]
    if unknown:
        parser.error(f"--models: no setup for {unknown}; known: {sorted(SETUPS)} (SETUPS in {__file__})")
    sys.argv = sys.argv[:1]  # RecBole's Config reads argv
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak = matmul_peak(device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.sasrec_variants:
            dataset = args.dataset or "beauty"
            name, keys = prepare(dataset, args.max_users, Path(tmp))
            keys.update(args.config)
            runs = {}
            for variant, (buckets, fused) in SASREC_VARIANTS.items():
                runs[f"SASRec ({variant})"] = build(
                    "SASRec", name, files(dataset, None), {**keys, "length_buckets": buckets},
                    fused, shared=next(iter(runs.values()), None))
            rows.append(report(runs, "SASRec (stock)", args, peak, dataset))
        for model in [] if args.sasrec_variants else args.models:
            dataset, experiment, extra = SETUPS[model]
            name, keys = prepare(dataset, args.max_users, Path(tmp))
            keys.update(args.config)
            run = build(model, name, files(dataset, experiment), {**keys, **extra}, True)
            runs = {model: run}
            if model != "SASRec":
                matched = ["train_batch_size", "MAX_ITEM_LIST_LENGTH"]
                matched += ["hidden_size", "inner_size"] if args.same_width else []
                runs["SASRec"] = build("SASRec", name, files(dataset, None), {
                    **keys, **{k: run["config"][k] for k in matched if run["config"][k]}}, True)
            rows.append(report(runs, "SASRec", args, peak, dataset))
    write(args, rows, peak, device)


def prepare(dataset: str, max_users: int, tmp: Path) -> tuple[str, dict]:
    if not max_users:
        return dataset, {}
    name, root = slice_users(dataset, max_users, tmp)
    return name, {"data_path": str(root)}


def files(dataset: str, experiment: str | None) -> list[str]:
    """The dataset yaml (the slice has another name) and the experiment yaml."""
    yaml = PROPERTIES / "dataset" / f"{dataset}.yaml"
    out = [str(yaml)] if yaml.is_file() else []
    return out + ([str(PROPERTIES / "experiment" / experiment)] if experiment else [])


def report(runs: dict, base: str, args, peak: float, dataset: str) -> dict:
    result = {"dataset": dataset, "base": base, "runs": {}}
    if args.eval:
        result["eval"] = eval_overhead(next(iter(runs.values())), args.eval)
    if not args.steps:
        print(json.dumps(result), flush=True)
        return result
    timed = time_runs(runs, args.steps, args.warmup)
    for name in runs:
        timed[name]["peak_share"] = timed[name]["gflops"] / peak
    result["runs"] = timed
    print(json.dumps(result), flush=True)
    return result


def write(args, rows: list, peak: float, device) -> None:
    what = (torch.cuda.get_device_name(0) if device.type == "cuda"
            else f"CPU, {torch.get_num_threads()} thread(s)")
    command = "python benchmarks/speed.py " + " ".join(args.argv)
    lines = [f"Command: `{command.strip()}`", "",
             f"Device: {what}; torch {torch.__version__}; measured matmul peak {peak:.1f} GFLOP/s. "
             f"Means over {args.steps} steps after {args.warmup} warm-up steps, steps alternating "
             "between the rows of one table.", "",
             "| dataset | model | batch x width | CPU s/step | wall s/step | steps/epoch | CPU s/epoch "
             "| wall s/epoch | step / base (CPU) | epoch / base (CPU) | GFLOP/step | GFLOP/s (% peak) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        base = row["runs"].get(row["base"])
        for name, r in row["runs"].items():
            lines.append(
                f"| {row['dataset']} | {name} | {r['batch']} x {r['width']} | {r['cpu_s']:.3f} | "
                f"{r['wall_s']:.3f} | {r['steps_per_epoch']} | {r['epoch_cpu_s']:.0f} | "
                f"{r['epoch_wall_s']:.0f} | {r['cpu_s'] / base['cpu_s']:.2f} | "
                f"{r['epoch_cpu_s'] / base['epoch_cpu_s']:.2f} | "
                f"{r['gflop']:.1f} | {r['gflops']:.1f} ({100 * r['peak_share']:.0f}%) |")
    evals = [r for r in rows if "eval" in r]
    if evals:
        lines += ["", "| dataset | test rows | RecBole evaluate CPU s | ours CPU s | ratio |", "|---|---|---|---|---|"]
        for row in evals:
            e = row["eval"]
            lines.append(f"| {row['dataset']} | {e['rows']} | {e['recbole_s']:.3f} | {e['cdsr_s']:.3f} | "
                         f"{e['ratio']:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)


if __name__ == "__main__":
    main()
