"""Lookup of models, datasets and trainers: recbole_cdsr first, then RecBole."""

from __future__ import annotations

import difflib
import importlib
import logging
import os
from pathlib import Path

import recbole.data
import recbole.utils
from recbole.utils import ModelType

logger = logging.getLogger(__name__)

PACKAGE = Path(__file__).resolve().parent
PROPERTIES = PACKAGE / "properties"
DATA_ENV = "RECBOLE_CDSR_DATA"
MODEL_FAMILIES = ("sequential_recommender",)
# RecBole's own families, minus exlib (it imports optional lightgbm/xgboost).
RECBOLE_FAMILIES = (
    "sequential_recommender",
    "general_recommender",
    "context_aware_recommender",
    "knowledge_aware_recommender",
)


def check_choice(config, key: str, choices: tuple, owner: str):
    """Returns ``config[key]``, or raises a ValueError naming the key, the value and the
    allowed choices (``owner`` is the model whose yaml holds the key)."""
    value = config[key]
    if value not in choices:
        raise ValueError(
            f"{owner}: {key} must be one of {choices}, got {value!r}; set it in "
            f"{owner}.yaml or --{key}="
        )
    return value


def default_data_path() -> Path:
    """Where converted datasets live unless ``data_path`` is set.

    ``$RECBOLE_CDSR_DATA``, else ``atomic_data/`` of a source checkout, else
    ``~/.cache/recbole_cdsr/atomic_data``.
    """
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    checkout = PACKAGE.parent
    if (checkout / "setup.cfg").is_file() and (checkout / "atomic_data").is_dir():
        return checkout / "atomic_data"
    return Path("~/.cache/recbole_cdsr/atomic_data").expanduser()


def our_models() -> list[str]:
    """Names of the models recbole_cdsr itself defines."""
    names = []
    for family in MODEL_FAMILIES:
        folder = PACKAGE / "model" / family
        for path in sorted(folder.glob("*.py")):
            if path.stem != "__init__":
                module = importlib.import_module(f"recbole_cdsr.model.{family}.{path.stem}")
                names += [
                    n for n in dir(module)
                    if n.lower() == path.stem and isinstance(getattr(module, n), type)
                ]
    return names


def recbole_sequential_models() -> list[str]:
    import recbole.model.sequential_recommender as seq

    return sorted(n for n in dir(seq) if n[:1].isupper())


def get_model(name: str) -> type:
    """Returns the model class ``name``: recbole_cdsr's, else RecBole's.

    Raises:
        ValueError: listing the models that exist.
    """
    from recbole_cdsr._compat import import_recbole_sequential_models

    import_recbole_sequential_models()
    module = _model_module(name)
    if module is not None and hasattr(module, name):
        return getattr(module, name)
    for family in RECBOLE_FAMILIES:
        module_path = f"recbole.model.{family}.{name.lower()}"
        if module is None and importlib.util.find_spec(module_path) is not None:
            module = importlib.import_module(module_path)
    if module is not None and hasattr(module, name):
        return getattr(module, name)
    ours, theirs = our_models(), recbole_sequential_models()
    # A module of that lower-case name exists: the class name differs only in case.
    same = [n for n in dir(module or object) if n.lower() == name.lower()]
    by_lower = {n.lower(): n for n in ours + theirs}
    near = same or [by_lower[m] for m in difflib.get_close_matches(name.lower(), by_lower, n=3)]
    hint = f" Did you mean {' or '.join(map(repr, near))}? (names are case-sensitive)"
    hint = hint if near else ""
    raise ValueError(
        f"unknown model {name!r}.{hint} recbole_cdsr models: {ours}; RecBole "
        f"sequential models: {theirs} (and RecBole's other families); pass --model=NAME"
    )


def _model_module(model_name: str):
    """The recbole_cdsr module defining ``model_name``, or None for RecBole models."""
    for family in MODEL_FAMILIES:
        module_path = f"recbole_cdsr.model.{family}.{model_name.lower()}"
        if importlib.util.find_spec(module_path) is not None:
            return importlib.import_module(module_path)
    return None


def get_trainer(model_type: ModelType, model_name: str) -> type:
    """``<Model>Trainer`` from recbole_cdsr.trainer or the model's own module, else
    CDSRTrainer for sequential models, else RecBole's choice."""
    from recbole_cdsr import trainer

    name = f"{model_name}Trainer"
    for module in (trainer, _model_module(model_name)):
        if module is not None and hasattr(module, name):
            return getattr(module, name)
    if model_type == ModelType.SEQUENTIAL:
        return trainer.CDSRTrainer
    return recbole.utils.get_trainer(model_type, model_name)


def create_dataset(config):
    """Converts the dataset if needed, checks its atomic files and builds the Dataset.

    Registered datasets are converted on first use (cached in ``data_path``); any other
    name is read from ``<data_path>/<dataset>/`` as RecBole does.
    """
    from recbole_cdsr.data import dataset as cdsr_datasets
    from recbole_cdsr.data.registry import DATASETS, prepare_dataset
    from recbole_cdsr.data.sources import RawSource

    name = config["dataset"]
    folder = Path(config["data_path"])
    if name in DATASETS:
        source = RawSource(
            config["mirror_path"], config["download_path"], config["allow_download"]
        )
        prepare_dataset(name, folder.parent, source)
    elif not folder.is_dir():
        raise ValueError(
            f"unknown dataset {name!r}: not in the registry {sorted(DATASETS)} and no "
            f"folder {folder}. Bring your own with atomic files there "
            f"(docs/atomic_format.md)"
        )
    check_dataset_files(config)
    if config["MODEL_TYPE"] != ModelType.SEQUENTIAL:
        return recbole.data.create_dataset(config)
    name = f"{config['model']}Dataset"
    for module in (cdsr_datasets, _model_module(config["model"])):
        if module is not None and hasattr(module, name):
            return getattr(module, name)(config)
    return cdsr_datasets.CDSRDataset(config)


def check_dataset_files(config) -> None:
    """Checks every atomic file RecBole will read (rules: docs/atomic_format.md).

    Honours ``field_separator``, ``seq_separator``, ``encoding`` and ``load_col``; a fixed
    split (``benchmark_filename``) of a sequential model also needs an
    ``<ITEM_ID_FIELD><LIST_SUFFIX>`` history column without padding.

    Raises:
        FileNotFoundError: a file RecBole will read is missing.
        AtomicFileError: naming the file, line, field and value, and the fix.
    """
    from recbole_cdsr.data.atomic import (
        AtomicFileError,
        AtomicFormat,
        check_atomic_file,
        check_no_padding,
        token_values,
    )

    fmt = AtomicFormat.from_config(config)
    folder = Path(config["data_path"])
    name = config["dataset"]
    load_col = config["load_col"]

    def loaded(suffix: str) -> list[str] | None:  # None: every column
        cols = None if load_col is None else load_col.get(suffix)
        return None if cols is None or cols == "*" else list(cols)

    benchmark = config["benchmark_filename"]
    inter_files = [f"{name}.{part}.inter" for part in benchmark] if benchmark else [f"{name}.inter"]
    headers = {}
    for filename in inter_files:
        path = folder / filename
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; dataset {name} needs it")
        headers[path] = check_atomic_file(path, loaded("inter") or [], fmt, loaded("inter"))
    suffixes = ["user", "item"] if load_col is None else [s for s in load_col if s != "inter"]
    for suffix in suffixes:
        path = folder / f"{name}.{suffix}"
        if not path.is_file():
            if load_col is None:
                continue
            raise FileNotFoundError(f"load_col names '{suffix}' but {path} is missing")
        headers[path] = check_atomic_file(path, loaded(suffix) or [], fmt, loaded(suffix))
    if not benchmark or config["MODEL_TYPE"] != ModelType.SEQUENTIAL:
        return

    item_field = config["ITEM_ID_FIELD"]
    list_field = item_field + config["LIST_SUFFIX"]
    seq_len = config["seq_len"] or {}
    if list_field in seq_len:
        raise ValueError(
            f"seq_len {{{list_field}: {seq_len[list_field]}}} would keep the oldest "
            f"{seq_len[list_field]} items of each history; remove it from seq_len: "
            f"histories longer than MAX_ITEM_LIST_LENGTH keep their most recent items"
        )
    history_fields = {list_field, *(config["alias_of_item_id"] or [])}
    zero_is_item = None
    for filename in inter_files:
        path = folder / filename
        header, cols = headers[path], loaded("inter")
        if list_field not in header or (cols is not None and list_field not in cols):
            where = f"the header has {list(header)}" if list_field not in header else (
                f"load_col['inter'] is {cols}: add {list_field}")
            raise AtomicFileError(
                f"{path}: a fixed split (benchmark_filename) needs the history column "
                f"{list_field}:token_seq (the items before the target, oldest first); "
                f"{where}. See docs/atomic_format.md"
            )
        for field in sorted(history_fields & set(header)):
            if header[field] != "token_seq":
                continue
            if zero_is_item is None:
                items = set()
                for other in inter_files:
                    items |= token_values(folder / other, item_field, fmt)
                item_path = folder / f"{name}.item"
                if item_path in headers and item_field in headers[item_path]:
                    items |= token_values(item_path, item_field, fmt)
                zero_is_item = "0" in items
            if not zero_is_item:
                check_no_padding(path, field, fmt)


def data_preparation(config, dataset):
    """RecBole's split into train/valid/test loaders, with length-bucketed training
    batches (``length_buckets``, recbole_cdsr/data/bucketing.py) for models whose
    training does not depend on the padding width.

    Returns:
        (train_data, valid_data, test_data) loaders.
    """
    from recbole_cdsr.data.bucketing import LengthBucketTrainDataLoader, use_length_buckets

    train, valid, test = recbole.data.data_preparation(config, dataset)
    if use_length_buckets(config, get_model(config["model"]), train):
        train = LengthBucketTrainDataLoader(
            config, train._dataset, train._sampler, shuffle=train.shuffle
        )
    return train, valid, test
