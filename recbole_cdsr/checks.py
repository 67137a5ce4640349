"""Start-of-run checks: every setting that could fail or mislead later is checked before
the first training batch, with the bad value, the allowed values and the fix.

:func:`check_config` needs only the Config (run before any data is read);
:func:`check_dataset` the loaded dataset (run before the splits and any model-specific
data stage are built); :func:`check_splits` the splits and the trainer (run before
``fit``). All are called by :func:`recbole_cdsr.quick_start.run_recbole_cdsr`. Each
check is its own function, so a test can exercise one at a time.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from recbole.evaluator.register import metrics_dict
from recbole.utils import InputType, ModelType

logger = logging.getLogger(__name__)

# RecBole's own default for pairwise losses (recbole/properties/overall.yaml).
DEFAULT_TRAIN_NEGATIVES = {
    "distribution": "uniform",
    "sample_num": 1,
    "alpha": 1.0,
    "dynamic": False,
    "candidate_num": 0,
}

# Training stages run before the main ``epochs`` loop, per model: (key, stage, minimum).
# ``epochs`` always bounds the last stage only. Keep in step with the model yamls.
STAGE_BUDGETS = {
    "SeeDRec": (
        ("dm_epochs", "stage 1 S2IDM diffusion (early stop: dm_stopping_step)", 1),
        ("pretrain_epochs", "stage 2 backbone pre-training (0 skips it)", 0),
    ),
    "LLMCDSR": (
        ("pretrain_epochs", "stage 2 contrastive pre-training, per domain "
         "(early stop: pretrain_stopping_step)", 1),
    ),
    "I2VAE": (("psg_epochs", "LightGCN for the pseudo-sequences (0 = untrained)", 0),),
}


class ConfigCheckError(ValueError):
    """A setting that cannot work, found before training (the message says the fix)."""


def _user_set(config, key: str) -> bool:
    """Whether ``key`` came from the user (config files, dict or command line), not a
    package default."""
    return key in getattr(config, "external_config_dict", {})


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ------------------------------------------------------------------ config only


def check_config(config, saved: bool = True) -> None:
    """Checks (and, where documented, completes) ``config`` before any data is read.

    Args:
        saved: whether the run writes checkpoints (``checkpoint_dir`` is then probed).

    Raises:
        ConfigCheckError: naming the key, its value, what is allowed and the fix.
    """
    check_epochs(config)
    check_stage_budgets(config)
    check_train_negatives(config)
    check_eval_settings(config)
    check_valid_metric_name(config)
    check_device(config)
    check_writable(config, saved)


def check_epochs(config) -> None:
    """``epochs`` must be a positive int: 0 would train nothing and then evaluate a
    checkpoint that was never written."""
    epochs = config["epochs"]
    if not _is_int(epochs) or epochs < 1:
        raise ConfigCheckError(
            f"epochs must be a positive int, got {epochs!r}; set --epochs=N (N >= 1). "
            "To evaluate without training, reload a checkpoint with "
            "recbole_cdsr.quick_start.load_data_and_model(path)"
        )


def stage_budgets(config) -> list[tuple[str, str, int]]:
    """``[(key, stage, minimum), ...]`` of the model's stages, the main ``epochs`` last."""
    stages = list(STAGE_BUDGETS.get(config["model"], ()))
    last = "last stage" if stages else "training"
    return stages + [("epochs", f"{last} (RecBole fit, early stop: stopping_step)", 1)]


def check_stage_budgets(config) -> None:
    """Every stage's epoch budget is an int >= its minimum; all are logged at start, so a
    run with ``--epochs=1`` shows what the earlier stages will spend."""
    stages = stage_budgets(config)
    for key, stage, minimum in stages:
        value = config[key]
        if not _is_int(value) or value < minimum:
            raise ConfigCheckError(
                f"{config['model']}: {key} ({stage}) must be an int >= {minimum}, got "
                f"{value!r}; set it in {config['model']}.yaml or --{key}="
            )
    if len(stages) > 1:
        logger.info(
            "%s stage budgets (--epochs bounds only the last): %s", config["model"],
            "; ".join(f"{stage}: {key}={config[key]}" for key, stage, _ in stages),
        )


def check_train_negatives(config) -> None:
    """A pairwise model (``loss_type: BPR``, or a PAIRWISE ``input_type`` without a
    ``loss_type``, such as RecBole's BPR) needs a sampled negative per row
    (``neg_item_id``). Our overall.yaml turns RecBole's default negatives off for CE; such
    a run without its own ``train_neg_sample_args`` gets RecBole's default back, with a
    log line. Models with other loss types check their own needs."""
    pairwise = config["MODEL_INPUT_TYPE"] == InputType.PAIRWISE and config["loss_type"] is None
    if config["loss_type"] != "BPR" and not pairwise:
        return
    args = config["train_neg_sample_args"] or {}
    if args.get("distribution", "none") not in (None, "none"):
        return
    config["train_neg_sample_args"] = dict(DEFAULT_TRAIN_NEGATIVES)
    why = "loss_type BPR" if config["loss_type"] == "BPR" else f"{config['model']} (pairwise)"
    logger.info(
        "%s without train_neg_sample_args: using RecBole's default %s (set "
        "train_neg_sample_args to change it)", why, DEFAULT_TRAIN_NEGATIVES,
    )


def check_eval_settings(config) -> None:
    """Refuses evaluation settings that contradict each other.

    * ``eval_args.mode`` must be ``full`` for sequential models: domain masking, fixed
      candidates and per-domain metrics act on full-sort scores. RecBole's ``uniN``
      becomes ``eval_candidates: {num: N, pool: all}``.
    * With ``eval_candidates``, its ``pool`` decides the ranked items and ``domain_mask``
      is not used; a ``domain_mask`` the user set that disagrees with ``pool``
      (True with ``pool: all``, False with ``pool: domain``) is refused.
    """
    if config["MODEL_TYPE"] != ModelType.SEQUENTIAL:
        return
    modes = (config["eval_args"] or {}).get("mode", {})
    for phase, mode in modes.items():
        if mode != "full":
            hint = (
                f"eval_candidates: {{num: {mode[3:]}, pool: all}}"
                if str(mode).startswith("uni") else "eval_candidates: {num: N, pool: domain}"
            )
            raise ConfigCheckError(
                f"eval_args.mode[{phase!r}] is {mode!r}; recbole_cdsr evaluates on full-sort "
                f"scores only (mode 'full'). For sampled ranking set eval_args mode: full "
                f"and {hint}"
            )
    candidates = config["eval_candidates"]
    if not candidates:
        return
    pool = candidates.get("pool", "domain") if isinstance(candidates, dict) else None
    mask = config["domain_mask"]
    contradicts = pool in ("domain", "all") and mask != (pool == "domain")
    if contradicts and _user_set(config, "domain_mask"):
        raise ConfigCheckError(
            f"domain_mask: {mask} contradicts eval_candidates pool: {pool!r} (with "
            f"eval_candidates the pool decides which items are ranked). Use pool: "
            f"{'domain' if mask else 'all'}, or drop domain_mask"
        )
    logger.info("eval_candidates %s decide the ranked items (domain_mask unused)", candidates)


def metric_keys(config) -> list[str]:
    """Result keys of ``metrics`` x ``topk`` as the evaluator names them (``ndcg@10``)."""
    keys = []
    for metric in config["metrics"]:
        name = metric.lower()
        needs = getattr(metrics_dict.get(name), "metric_need", [])
        if {"rec.topk", "rec.items"} & set(needs):
            keys += [f"{name}@{k}" for k in config["topk"]]
        else:
            keys.append(name)
    return keys


def check_valid_metric_name(config) -> None:
    """The metric part of ``valid_metric`` (after any ``subset/``) must be computed; so
    must ``domain_select_metric`` when ``per_domain_selection`` is on."""
    _check_metric_key(config, "valid_metric")
    if config["per_domain_selection"]:
        _check_metric_key(config, "domain_select_metric")


def _check_metric_key(config, key: str) -> None:
    value = config[key]
    metric = str(value).lower().rpartition("/")[2]
    keys = metric_keys(config)
    if metric in keys:
        return
    name, _, k = metric.partition("@")
    if name not in {m.lower() for m in config["metrics"]}:
        fix = f"add {name} to metrics (--metrics=...) or choose one of these"
    elif k.isdigit():
        topk = sorted({*config["topk"], int(k)})
        fix = f"add {k} to topk (--topk=\"{topk}\") or choose one of these"
    else:
        fix = "choose one of these"
    close = difflib.get_close_matches(metric, keys, n=1)
    raise ConfigCheckError(
        f"{key} {value!r} is not computed: {fix}: {keys} (metrics {config['metrics']} x "
        f"topk {config['topk']}){f'; did you mean {close[0]!r}?' if close else ''}"
    )


def check_device(config) -> None:
    """Says in the log when a GPU was asked for but the run is on the CPU."""
    device = config["device"]
    if device is None or torch.device(device).type != "cpu":
        return
    asked = _user_set(config, "gpu_id") or (_user_set(config, "use_gpu") and config["use_gpu"])
    if asked and config["use_gpu"]:
        logger.warning(
            "gpu_id=%s given, but no CUDA device is available (torch.cuda.is_available() "
            "is False): this run uses the CPU", config["gpu_id"],
        )
    else:
        logger.info("device: cpu")


def _probe_folder(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
            pass
    except OSError as err:
        raise ConfigCheckError(
            f"{what}: cannot write in {folder} ({err.strerror or err}); choose a writable "
            f"folder"
        ) from err


def check_writable(config, saved: bool = True) -> None:
    """Creates and probe-writes the folders of ``result_file`` and ``checkpoint_dir``, so a
    read-only path fails now, not after training."""
    if saved:
        folder = config["checkpoint_dir"]
        _probe_folder(Path(folder), f"checkpoint_dir={folder!r}")
    result_file = config["result_file"]
    if result_file and config["local_rank"] == 0:
        path = Path(result_file)
        if path.is_dir():
            raise ConfigCheckError(
                f"result_file={result_file!r} is a folder; give a file path such as "
                f"{path / 'result.json'}"
            )
        _probe_folder(path.parent, f"result_file={result_file!r}")
        if path.exists() and not os.access(path, os.W_OK):
            raise ConfigCheckError(
                f"result_file={result_file!r} exists and is read-only; choose another path"
            )


# ------------------------------------------------------------------ built data


def check_dataset(config, dataset) -> None:
    """Checks that need the loaded dataset (domains, groups), run before the splits are
    built (so before any model-specific data stage such as I2VAE's LightGCN).

    Raises:
        ConfigCheckError: naming the key, its value, what is allowed and the fix.
    """
    if not hasattr(dataset, "domain_names") or config["MODEL_TYPE"] != ModelType.SEQUENTIAL:
        return
    check_valid_metric_subset(config, dataset)
    check_topk_pool(config, dataset)
    check_candidate_num(config, dataset)


def check_splits(config, trainer, valid_data, test_data) -> None:
    """Draws the fixed candidate sets now (cached for evaluation), so a row with too few
    eligible items (``exclude: history``) fails before training, not at the first
    evaluation."""
    if not config["eval_candidates"] or getattr(trainer, "candidate_args", None) is None:
        return
    for data in (valid_data, test_data):
        if data:
            try:
                trainer._candidate_table(data._dataset)
            except ValueError as err:
                raise ConfigCheckError(str(err)) from err


def subset_names(config, dataset) -> list[str]:
    """Subsets the evaluator reports (the ``subset/`` of ``subset/ndcg@10``)."""
    domains = list(dataset.domain_names)
    groups = []
    for field in config["eval_group_fields"] or []:
        if field in dataset.field2id_token:
            groups += [str(t).lower() for t in dataset.field2id_token[field][1:]]
    names = domains + groups
    if len(domains) > 1:
        names += ["mean"] + [f"{d}.{g}" for d in domains for g in groups]
    return names


def check_valid_metric_subset(config, dataset) -> None:
    """The ``subset/`` of ``valid_metric`` must be a domain, a group, ``mean`` or
    ``<domain>.<group>`` of this dataset."""
    subset, slash, _ = str(config["valid_metric"]).lower().rpartition("/")
    if not slash:
        return
    names = subset_names(config, dataset)
    if subset in names:
        return
    close = difflib.get_close_matches(subset, names, n=1)
    raise ConfigCheckError(
        f"valid_metric {config['valid_metric']!r}: {subset!r} is not a subset of "
        f"{dataset.dataset_name}; subsets: {names}"
        f"{f' (did you mean {close[0]!r}?)' if close else ''}; or drop the prefix for all rows"
    )


def domain_sizes(dataset) -> dict[str, int]:
    """Item count of every domain that has interactions (so may hold targets)."""
    sizes = torch.bincount(dataset.item_domain[1:], minlength=len(dataset.domain_names))
    items = torch.as_tensor(np.asarray(dataset.inter_feat[dataset.iid_field])).long()
    used = dataset.item_domain[items].unique().tolist()
    return {dataset.domain_names[d]: int(sizes[d]) for d in used if d >= 0}


def _candidate_num(config) -> int | None:
    candidates = config["eval_candidates"]
    num = candidates.get("num") if isinstance(candidates, dict) else None
    return num if _is_int(num) and num > 0 else None  # else CDSRTrainer refuses it


def ranked_pool(config, dataset) -> tuple[int, str]:
    """Smallest number of items an evaluation target is ranked among, and what sets it."""
    num = _candidate_num(config)
    if num is not None:
        return num + 1, f"eval_candidates.num={num} + the target"
    if config["domain_mask"]:
        sizes = domain_sizes(dataset)
        if sizes:
            name = min(sizes, key=sizes.get)
            return sizes[name], f"domain {name!r} (domain_mask True)"
    return dataset.item_num - 1, "all items (domain_mask False)"


def check_topk_pool(config, dataset) -> None:
    """No cut-off may exceed the smallest ranked pool (its top-k would hold -inf items)."""
    pool, source = ranked_pool(config, dataset)
    too_big = [k for k in config["topk"] if k > pool]
    if too_big:
        keep = [k for k in config["topk"] if k <= pool] or [pool]
        raise ConfigCheckError(
            f"topk {config['topk']} has {too_big} larger than the smallest ranked pool, "
            f"{pool} items of {source}; use cut-offs <= {pool} (e.g. --topk=\"{keep}\")"
        )


def check_candidate_num(config, dataset) -> None:
    """``eval_candidates.num`` negatives must fit in every domain's pool (``pool:
    domain``) or in all items (``pool: all``), besides the target."""
    num = _candidate_num(config)
    if num is None:
        return
    pool = config["eval_candidates"].get("pool", "domain")
    sizes = (
        domain_sizes(dataset) if pool == "domain"
        else {f"all of {dataset.dataset_name}": dataset.item_num - 1}
    )
    for name, size in sizes.items():
        if size - 1 < num:
            raise ConfigCheckError(
                f"eval_candidates.num={num} but pool {pool!r} of {name!r} has only {size} "
                f"items ({size - 1} negatives besides the target); lower num to <= "
                f"{size - 1}{' or use pool: all' if pool == 'domain' else ''}"
            )


# ------------------------------------------------------------------ results


def strict_json_value(value):
    """``value`` with every NaN/inf float replaced by None (JSON null), recursively, so
    ``json.dumps(..., allow_nan=False)`` succeeds (e.g. a best_valid_score of -inf when
    no validation ran)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json_value(v) for v in value]
    return value
