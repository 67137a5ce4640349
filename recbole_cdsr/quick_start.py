"""Entry points: train + evaluate (one process or DDP), results, checkpoint reload."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import MutableMapping
from pathlib import Path

import torch
import torch.distributed as dist
from recbole.utils import init_logger, init_seed

from recbole_cdsr.checks import check_config, check_dataset, check_splits, strict_json_value
from recbole_cdsr._compat import use_fused_layers
from recbole_cdsr.config import Config, checkpoint_loading
from recbole_cdsr.utils import create_dataset, data_preparation, get_model, get_trainer

logger = logging.getLogger(__name__)


def run(
    model=None,
    dataset=None,
    config_file_list=None,
    config_dict=None,
    saved=True,
    nproc=1,
    world_size=-1,
    ip="localhost",
    port="5678",
    group_offset=0,
):
    """Runs one experiment, in this process or as ``nproc`` DDP ranks (RecBole's scheme).

    Returns:
        The result dict of :func:`run_recbole_cdsr` (rank 0's under DDP).
    """
    if nproc == 1 and world_size <= 0:
        return run_recbole_cdsr(model, dataset, config_file_list, config_dict, saved)
    import torch.multiprocessing as mp

    # Config-only checks once here, so a bad setting fails before any rank starts.
    check_config(Config(model, dataset, config_file_list, config_dict), saved)

    world_size = nproc if world_size == -1 else world_size
    queue = mp.get_context("spawn").SimpleQueue()
    config_dict = dict(config_dict or {})
    config_dict.update(
        {"world_size": world_size, "ip": ip, "port": port, "nproc": nproc, "offset": group_offset}
    )
    kwargs = {"config_dict": config_dict, "queue": queue, "saved": saved}
    mp.spawn(_run_rank, args=(model, dataset, config_file_list, kwargs), nprocs=nproc, join=True)
    return None if queue.empty() else queue.get()


def _run_rank(rank, model, dataset, config_file_list, kwargs):
    if not isinstance(kwargs, MutableMapping):
        raise TypeError(f"_run_rank expects a kwargs dict last, got {type(kwargs)}")
    kwargs = dict(kwargs)
    kwargs["config_dict"] = {**kwargs.get("config_dict", {}), "local_rank": rank}
    run_recbole_cdsr(model, dataset, config_file_list, **kwargs)


def run_recbole_cdsr(
    model=None, dataset=None, config_file_list=None, config_dict=None, saved=True, queue=None
) -> dict:
    """Trains on the train split, selects on valid, evaluates on test.

    Returns:
        ``{"model", "dataset", "config", "valid", "test", "time", "valid_curve",
        "best_valid_score", "valid_score_bigger"}``; ``valid``/``test`` are nested as
        ``{"all": {...}, "<domain>": {...}, "<group>": {...}}`` (see results_to_nested).
        With ``result_file`` set, the same dict is written as strict JSON (write_result).

    Raises:
        recbole_cdsr.checks.ConfigCheckError: a setting refused before the first batch.
    """
    config = Config(model, dataset, config_file_list, config_dict)
    # start-of-run checks: before any data is read (they may add BPR's negatives), on the
    # loaded dataset, then on the splits; all before the first batch
    _, train_data, valid_data, test_data, model = build(
        config, check=lambda cfg: check_config(cfg, saved), check_dataset=check_dataset
    )
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    check_splits(config, trainer, valid_data, test_data)

    curve = []
    start = time.time()
    best_valid_score, best_valid_result = trainer.fit(
        train_data,
        valid_data,
        saved=saved,
        show_progress=config["show_progress"],
        callback_fn=lambda epoch, score: curve.append([epoch, score]),
    )
    train_s = time.time() - start
    start = time.time()
    test_result = trainer.evaluate(
        test_data, load_best_model=saved, show_progress=config["show_progress"]
    )
    eval_s = time.time() - start
    result = {
        "model": config["model"],
        "dataset": config["dataset"],
        "config": plain_config(config),
        "domains": list(getattr(train_data._dataset, "domain_names", [])),
        "valid": results_to_nested(best_valid_result),
        "test": results_to_nested(test_result),
        "time": {"train_s": round(train_s, 3), "eval_s": round(eval_s, 3),
                 "epochs": len(trainer.train_loss_dict)},
        "valid_curve": curve,
        "train_loss": [_loss_value(v) for _, v in sorted(trainer.train_loss_dict.items())],
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "saved_model_file": trainer.saved_model_file if saved else None,
    }
    logger.info("test results\n%s", format_table(result["test"]))
    if config["result_file"] and config["local_rank"] == 0:
        write_result(result, config["result_file"])
    if not config["single_spec"]:
        dist.destroy_process_group()
    if config["local_rank"] == 0 and queue is not None:
        queue.put(result)
    return result


def write_result(result: dict, result_file: str | Path) -> Path:
    """Writes ``result`` as strict JSON (NaN/inf floats become null), via a temporary
    file renamed into place, so a reader never sees half a file."""
    path = Path(result_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(strict_json_value(result), indent=1, allow_nan=False) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    logger.info("results written to %s", path)
    return path


def _loss_value(loss) -> float:
    """A logged epoch loss (a float, or a tuple of loss parts) as one float."""
    return float(sum(loss)) if isinstance(loss, tuple) else float(loss)


def build(config, check=None, check_dataset=None):
    """Seeds, logging, dataset, loaders and model for ``config``: the chain every entry
    point (run, tuning trial, checkpoint reload) shares. ``check(config)``, if given,
    runs once logging is set up and before any data is read; ``check_dataset(config,
    dataset)`` before the splits are built.

    Returns:
        (dataset, train_data, valid_data, test_data, model)
    """
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    use_fused_layers(bool(config["fused_layers"]))  # before any model is built
    logger.info(sys.argv)
    logger.info(config)
    if check is not None:
        check(config)
    dataset = create_dataset(config)
    logger.info(dataset)
    if check_dataset is not None:
        check_dataset(config, dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(model)
    return dataset, train_data, valid_data, test_data, model


def results_to_nested(flat: dict | None) -> dict:
    """``{"ndcg@10": .., "food/ndcg@10": .., "food/n": ..}`` ->
    ``{"all": {"ndcg@10": ..}, "food": {"n": .., "ndcg@10": ..}}``."""
    nested: dict[str, dict] = {}
    for key, value in (flat or {}).items():
        subset, _, metric = key.rpartition("/")
        value = value.item() if hasattr(value, "item") else value
        nested.setdefault(subset or "all", {})[metric] = value
    for part in nested.values():  # "n" first, as in the documented schema
        if "n" in part:
            part_n = part.pop("n")
            items = list(part.items())
            part.clear()
            part.update([("n", part_n), *items])
    return nested


def format_table(nested: dict) -> str:
    """A fixed-width table, one row per subset."""
    metrics = [m for m in next(iter(nested.values()), {}) if m != "n"]
    lines = ["subset".ljust(24) + "n".rjust(8) + "".join(m.rjust(11) for m in metrics)]
    for subset, values in nested.items():
        cells = "".join(
            f"{values[m]:11.4f}" if m in values else " " * 11 for m in metrics
        )
        lines.append(subset.ljust(24) + str(values.get("n", "")).rjust(8) + cells)
    return "\n".join(lines)


def plain_config(config) -> dict:
    """The final config as JSON-able values (others as strings)."""
    out = {}
    for key, value in config.final_config_dict.items():
        try:
            json.dumps(value)
            out[key] = value
        except TypeError:
            out[key] = str(value)
    return out


def load_data_and_model(model_file: str | Path, trust_checkpoint: bool = False):
    """Rebuilds config, data and model from a checkpoint written by a run.

    The file is read with ``torch.load(weights_only=True)`` and an explicit allow-list
    (tensors, plain data, our Config rebuilder, RecBole's enums): a checkpoint that names
    anything else (e.g. a pickled payload that would run code) is refused.

    Args:
        model_file: a ``.pth`` file written by ``run_recbole_cdsr`` (any trainer of ours).
        trust_checkpoint: read the file with ``weights_only=False``, which runs whatever
            code the pickle names: only for files you trust, e.g. checkpoints written
            before our Config was stored as plain data.

    Returns:
        (config, model, dataset, train_data, valid_data, test_data)

    Raises:
        pickle.UnpicklingError: the file names a global outside the allow-list (and
            ``trust_checkpoint`` is False).
        ValueError: the file is not a recbole_cdsr checkpoint.
    """
    import pickle

    with checkpoint_loading():
        try:
            checkpoint = torch.load(model_file, map_location="cpu",
                                    weights_only=not trust_checkpoint)
        except pickle.UnpicklingError as err:
            lines = [l.strip() for l in str(err).splitlines() if l.strip()]
            reason = next((l for l in lines if "Unsupported" in l), lines[0] if lines else "")
            reason = reason.split(" Please use")[0]  # torch's advice would allow-list it
            old_torch = "" if hasattr(torch.serialization, "safe_globals") else (
                f" torch {torch.__version__} has no torch.serialization.safe_globals, so "
                "the allow-list cannot be applied: use torch >= 2.5.")
            raise pickle.UnpicklingError(
                f"{model_file}: refused by the weights-only loader (it names something "
                f"outside recbole_cdsr's allow-list): {reason}"
                f"{old_torch} If you wrote this file yourself (e.g. with an older "
                "recbole_cdsr) and trust it, pass load_data_and_model(path, "
                "trust_checkpoint=True), which runs the pickle's code."
            ) from err
    config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if not isinstance(config, Config):
        raise ValueError(
            f"{model_file}: not a recbole_cdsr checkpoint (expected a dict with a 'config' "
            f"Config, got {type(checkpoint).__name__} with config {type(config).__name__})"
        )
    # RecBole sets numpy's removed aliases (np.float, ...) in Config.__init__, which an
    # unpickled config skips: evaluation in a fresh process would fail on np.float.
    config.compatibility_settings()
    config.model_class = get_model(config["model"])
    # A DDP run pickles its rank settings; reload in a single process (RecBole #2063).
    for key in ("local_rank", "world_size", "nproc", "ip", "port", "offset"):
        config.final_config_dict.pop(key, None)
    config.final_config_dict["single_spec"] = True
    config.final_config_dict["local_rank"] = 0
    config.final_config_dict["device"] = (
        torch.device("cuda") if config["use_gpu"] and torch.cuda.is_available() else torch.device("cpu")
    )
    dataset, train_data, valid_data, test_data, model = build(config)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return config, model, dataset, train_data, valid_data, test_data
