"""Hyper-parameter tuning with hyperopt (RecBole's HyperTuning) or ray tune.

Both tools select on the **validation** metric only. Every trial trains and saves its
best-on-valid checkpoint; after the search, the best trial's checkpoint is evaluated
on test once. Results: a CSV and a markdown table of every trial, and a PNG of the valid
metric per trial.

Fixes over RecBole's ``run_hyper.py`` ray path (specs/recbole.md A.3 #12-14, E.2):
the trainable returns nothing (ray 2.x treats a return value as a final result),
reports the valid metric every epoch (ASHA can stop early), takes its resources from
the command line, keeps ray's CUDA_VISIBLE_DEVICES (RecBole would overwrite it with
``gpu_id``), and uses absolute config paths (ray changes the working directory).
"""

from __future__ import annotations

import csv
import functools
import logging
import math
import os
from pathlib import Path

logger = logging.getLogger(__name__)

TOOLS = ("hyperopt", "ray")
ALGOS = ("exhaustive", "random", "bayes")


def read_params_file(path: str | Path) -> dict[str, tuple[str, list]]:
    """Parses RecBole's params-file syntax, one ``name kind args`` per line.

    ``learning_rate loguniform -8,0`` | ``x uniform a,b`` | ``x quniform a,b,q`` |
    ``hidden_size choice [64,128]``. Returns ``{name: (kind, args)}``.
    """
    import ast

    space = {}
    for lineno, line in enumerate(Path(path).read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=2)
        if len(parts) != 3:
            raise ValueError(f"{path}:{lineno}: expected 'name kind args', got {line!r}")
        name, kind, args = parts
        if kind == "choice":
            values = ast.literal_eval(args)
            if not isinstance(values, list) or not values:
                raise ValueError(f"{path}:{lineno}: choice needs a non-empty list, got {args!r}")
        elif kind in ("uniform", "loguniform", "quniform"):
            values = [float(v) for v in args.split(",")]
            if len(values) != (3 if kind == "quniform" else 2):
                raise ValueError(f"{path}:{lineno}: {kind} needs {'a,b,q' if kind == 'quniform' else 'a,b'}")
        else:
            raise ValueError(
                f"{path}:{lineno}: unknown kind {kind!r}; use choice, uniform, loguniform, quniform"
            )
        space[name] = (kind, values)
    if not space:
        raise ValueError(f"{path}: no parameters found")
    return space


def train_trial(model, dataset, config_file_list, params, base_config, report=None) -> dict:
    """Trains one trial (valid only) and returns its record;
    ``report(epoch, score, saved_model_file)`` is called after every validation."""
    from recbole_cdsr.config import Config
    from recbole_cdsr.quick_start import build
    from recbole_cdsr.utils import get_trainer

    config = Config(model, dataset, config_file_list, {**base_config, **params})
    _, train_data, valid_data, _, net = build(config)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    callback = None
    if report is not None:
        callback = lambda epoch, score: report(epoch, score, trainer.saved_model_file)  # noqa: E731
    best_score, best_result = trainer.fit(
        train_data, valid_data, saved=True, show_progress=False, callback_fn=callback
    )
    return {
        "params": params,
        "valid_score": float(best_score),
        "valid_score_bigger": bool(config["valid_metric_bigger"]),
        "valid_result": {k: float(v) for k, v in (best_result or {}).items()},
        "saved_model_file": str(Path(trainer.saved_model_file).resolve()),
        "valid_metric": config["valid_metric"],
    }


def _hyperopt_objective(records, model, dataset, base_config, config_dict, config_file_list):
    record = train_trial(model, dataset, config_file_list, config_dict, base_config)
    records.append(record)
    # The dict RecBole's HyperTuning reads (RecBole-GNN #62: it needs "model").
    return {
        "model": model,
        "best_valid_score": record["valid_score"],
        "valid_score_bigger": record["valid_score_bigger"],
        "best_valid_result": record["valid_result"],
        "test_result": None,  # test is evaluated once, for the selected trial only
    }


def run_hyperopt(model, dataset, config_file_list, base_config, params_file, max_evals, algo):
    from recbole.trainer import HyperTuning

    records: list[dict] = []
    objective = functools.partial(_hyperopt_objective, records, model, dataset, base_config)
    tuner = HyperTuning(
        objective,
        algo=algo,
        max_evals=max_evals,
        params_file=str(params_file),
        fixed_config_file_list=config_file_list,
    )
    tuner.run()
    return records


def _ray_space(space: dict, algo: str) -> dict:
    from ray import tune

    out = {}
    for name, (kind, values) in space.items():
        if kind == "choice":
            out[name] = tune.grid_search(values) if algo == "exhaustive" else tune.choice(values)
        elif kind == "uniform":
            out[name] = tune.uniform(*values)
        elif kind == "quniform":
            out[name] = tune.quniform(*values)
        else:  # RecBole/hyperopt loguniform bounds are exponents
            out[name] = tune.loguniform(math.exp(values[0]), math.exp(values[1]))
    if algo == "exhaustive" and any(kind != "choice" for kind, _ in space.values()):
        raise ValueError("algo=exhaustive needs every parameter to be a 'choice'")
    return out


def _ray_trainable(params, model=None, dataset=None, config_file_list=None, base_config=None,
                   cpus=1):
    import sys

    import torch
    from ray.air import session

    sys.argv = sys.argv[:1]  # the worker's own flags must not become RecBole config keys
    torch.set_num_threads(max(1, int(cpus)))
    base = dict(base_config or {})
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if visible and torch.cuda.is_available():
        base["gpu_id"] = visible  # ray's assignment; RecBole would reset it to '0'
    else:
        base["use_gpu"] = False
    base["checkpoint_dir"] = str(Path(session.get_trial_dir()) / "saved")

    def report(epoch, score, saved_model_file):
        session.report({"valid_score": float(score), "epoch": epoch + 1,
                        "saved_model_file": str(Path(saved_model_file).resolve())})

    train_trial(model, dataset, config_file_list, params, base, report=report)


def start_local_ray(num_cpus: int | None = None, dashboard: bool = False) -> None:
    """Starts a private ray cluster whose every listening socket is on 127.0.0.1.

    ray 2.6.3 turns ``_node_ip_address="127.0.0.1"`` into the machine's outward address
    (``services.resolve_ip_for_localhost`` asks ``get_node_ip_address``), and gcs_server,
    raylet, the dashboard agent and every worker then listen on all interfaces, without
    authentication. ``get_node_ip_address`` answers 127.0.0.1 when
    ``ray_constants.ENABLE_RAY_CLUSTER`` is False (what ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
    sets at import), and with a loopback node address those processes bind 127.0.0.1
    only. The constant is set only while the cluster starts, then restored.

    Args:
        num_cpus: CPUs the cluster offers (default: all).
        dashboard: also start ray's dashboard (on 127.0.0.1:8265); off by default.
    """
    import ray
    from ray._private import ray_constants

    enabled = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        context = ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=dashboard,
                           dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1",
                           log_to_driver=False)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = enabled
    address = context.address_info["gcs_address"]
    if not address.startswith("127.0.0.1:"):
        ray.shutdown()
        raise RuntimeError(
            f"ray started its cluster on {address}, not on 127.0.0.1: this ray version "
            "does not honour the loopback setting (tested with ray 2.6.3); refusing to "
            "run an unauthenticated cluster on the network. Start one yourself and pass "
            "--ray_address=HOST:PORT"
        )
    logger.info("ray: private local cluster on %s (loopback only)", address)


def run_ray(model, dataset, config_file_list, base_config, params_file, max_evals, algo,
            cpus_per_trial=1, gpus_per_trial=0.0, ray_address=None, local_dir=None,
            max_epochs=None, ray_dashboard=False):
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    space = _ray_space(read_params_file(params_file), algo)
    bigger = _valid_bigger(model, dataset, config_file_list, base_config)
    if not ray.is_initialized():
        if ray_address:  # an existing cluster (`ray start --head`): its own binding
            ray.init(address=ray_address)
        else:
            start_local_ray(dashboard=ray_dashboard)
    search_alg = None
    if algo == "bayes":
        from ray.tune.search.hyperopt import HyperOptSearch

        search_alg = HyperOptSearch(metric="valid_score", mode="max" if bigger else "min")
    max_t = int(max_epochs or base_config.get("epochs") or 100)
    analysis = tune.run(
        tune.with_parameters(_ray_trainable, model=model, dataset=dataset,
                             config_file_list=config_file_list, base_config=base_config,
                             cpus=cpus_per_trial),
        config=space,
        num_samples=1 if algo == "exhaustive" else max_evals,
        search_alg=search_alg,
        scheduler=ASHAScheduler(metric="valid_score", mode="max" if bigger else "min",
                                max_t=max_t, grace_period=1, reduction_factor=2),
        resources_per_trial={"cpu": cpus_per_trial, "gpu": gpus_per_trial},
        local_dir=str(Path(local_dir or "ray_log").resolve()),
        verbose=1,
        raise_on_failed_trial=False,
    )
    records = []
    for trial in analysis.trials:
        scores = trial.metric_analysis.get("valid_score", {})
        if not scores:
            records.append({"params": trial.config, "valid_score": float("nan"),
                            "saved_model_file": "", "status": trial.status})
            continue
        best = scores["max"] if bigger else scores["min"]
        records.append({
            "params": trial.config,
            "valid_score": float(best),
            "valid_score_bigger": bigger,
            "saved_model_file": (trial.last_result or {}).get("saved_model_file", ""),
            "epochs": int(trial.metric_analysis.get("epoch", {}).get("max", 0)),
            "status": trial.status,
        })
    return records


def _valid_bigger(model, dataset, config_file_list, base_config) -> bool:
    from recbole_cdsr.config import Config

    return bool(Config(model, dataset, config_file_list, dict(base_config))["valid_metric_bigger"])


def tune(model, dataset, tool, params_file, max_evals=10, algo="random", config_file_list=None,
         base_config=None, tune_result=None, **ray_kwargs) -> dict:
    """Runs a search, evaluates the best trial on test, writes the result tables.

    Returns:
        ``{"trials": [...], "best": record, "test": nested test metrics,
        "files": {"csv", "md", "png"}}``.
    """
    if tool not in TOOLS:
        raise ValueError(f"--tune must be one of {TOOLS}, got {tool!r}")
    if algo not in ALGOS:
        raise ValueError(f"--algo must be one of {ALGOS}, got {algo!r}")
    read_params_file(params_file)  # fail early on a bad file
    config_file_list = [str(Path(f).resolve()) for f in config_file_list or []]
    base_config = dict(base_config or {})
    _prepare_data(model, dataset, config_file_list, base_config)
    if tool == "hyperopt":
        records = run_hyperopt(model, dataset, config_file_list, base_config, params_file,
                               max_evals, algo)
    else:
        records = run_ray(model, dataset, config_file_list, base_config, params_file,
                          max_evals, algo, **ray_kwargs)
    scored = [r for r in records if r.get("saved_model_file") and not math.isnan(r["valid_score"])]
    if not scored:
        raise RuntimeError("no trial finished; see the log above")
    bigger = scored[0].get("valid_score_bigger", True)
    best = (max if bigger else min)(scored, key=lambda r: r["valid_score"])
    test = evaluate_checkpoint(best["saved_model_file"])
    files = write_tables(records, best, test, tune_result or f"tune_{model}_{tool}.csv")
    return {"trials": records, "best": best, "test": test, "files": files}


def _prepare_data(model, dataset, config_file_list, base_config) -> None:
    """Converts the dataset once, before trials run in parallel."""
    from recbole_cdsr.config import Config
    from recbole_cdsr.data.registry import DATASETS, prepare_dataset
    from recbole_cdsr.data.sources import RawSource

    config = Config(model, dataset, config_file_list, dict(base_config))
    if config["dataset"] in DATASETS:
        prepare_dataset(config["dataset"], Path(config["data_path"]).parent,
                        RawSource(config["mirror_path"], config["download_path"],
                                  config["allow_download"]))


def evaluate_checkpoint(model_file: str) -> dict:
    """Test metrics (nested) of a saved checkpoint."""
    from recbole_cdsr.quick_start import load_data_and_model, results_to_nested
    from recbole_cdsr.utils import get_trainer

    config, model, _, _, _, test_data = load_data_and_model(model_file)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    return results_to_nested(trainer.evaluate(test_data, load_best_model=False))


def write_tables(records: list[dict], best: dict, test: dict, csv_path: str | Path) -> dict:
    """Writes every trial as CSV + markdown, and the valid metric per trial as PNG."""
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    names = sorted({k for r in records for k in r["params"]})
    test_all = test.get("all", {})
    metric = best.get("valid_metric", "valid_score")
    header = ["trial", *names, f"valid {metric}", "selected", "test (selected only)"]
    rows = []
    for i, r in enumerate(records, start=1):
        selected = r is best
        test_cell = ", ".join(f"{k}={v:.4f}" for k, v in test_all.items() if k != "n") if selected else ""
        rows.append([i, *[r["params"].get(n, "") for n in names], round(r["valid_score"], 6),
                     "yes" if selected else "", test_cell])
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    md_path = csv_path.with_suffix(".md")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    md_path.write_text("\n".join(lines) + "\n")
    png_path = csv_path.with_suffix(".png")
    _plot_trials(records, best, metric, png_path)
    logger.info("tuning tables: %s, %s, %s", csv_path, md_path, png_path)
    return {"csv": str(csv_path), "md": str(md_path), "png": str(png_path)}


def _plot_trials(records, best, metric, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = list(range(1, len(records) + 1))
    ys = [r["valid_score"] for r in records]
    fig, ax = plt.subplots(figsize=(max(4, len(xs) * 0.6), 3))
    ax.plot(xs, ys, "o-", color="tab:blue", label=f"valid {metric}")
    ax.plot([records.index(best) + 1], [best["valid_score"]], "*", color="tab:red",
            markersize=14, label="selected")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"valid {metric}")
    ax.set_xticks(xs)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
