"""Config: RecBole's Config plus recbole_cdsr's yaml layers (RecBole-GNN pattern).

Precedence, lowest first: RecBole's internal yaml < recbole_cdsr ``properties/overall.yaml``
< ``properties/model/<Model>.yaml`` < ``properties/dataset/<dataset>.yaml`` < config files
< config dict < command line. Command-line values and config-dict strings are read as
literals only (recbole_cdsr.literal.parse_literal), never evaluated.

In a checkpoint the Config is stored as plain data (Config.checkpoint_state), so that it
loads with ``torch.load(weights_only=True)`` inside checkpoint_loading(); see the
"checkpoints" section at the end.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from pathlib import Path
from types import SimpleNamespace

import torch

from recbole.config import Config as RecBoleConfig
from recbole.utils import ModelType
from recbole.utils.enum_type import EvaluatorType, FeatureSource, FeatureType, InputType

from recbole_cdsr.literal import parse_literal
from recbole_cdsr.utils import PROPERTIES, default_data_path, get_model

logger = logging.getLogger(__name__)

DEFAULT_DATASET = "ml100k_genre"
# RecBole models that ignore the history and can share the sequential split (the
# popularity ranker every comparison table reports as its floor).
SEQUENCE_AGNOSTIC_MODELS = ("Pop",)


class Config(RecBoleConfig):
    """RecBole's Config that finds recbole_cdsr models, datasets and defaults.

    Args:
        model: model name or class; None reads it from files/dict/command line.
        dataset: dataset name; None reads it from files/dict/command line, else the
            embedded default ``ml100k_genre``.
        config_file_list: yaml files, later ones win.
        config_dict: key -> value, wins over files.
    """

    def _init_parameters_category(self) -> None:
        super()._init_parameters_category()
        # RecBole hands out its module-level lists and later extends them in place.
        self.parameters = {k: list(v) for k, v in self.parameters.items()}

    def _convert_config_dict(self, config_dict: dict) -> dict:
        # RecBole eval()s every string value (command line and config dict); read
        # literals only, so `--foo="__import__('os')..."` stays a string.
        for key, value in config_dict.items():
            config_dict[key] = parse_literal(value)
        return config_dict

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
            if model is None:
                raise ValueError(
                    "no model given: pass --model=NAME (a recbole_cdsr or RecBole model)"
                )
        if isinstance(model, str):
            model = get_model(model)
        if dataset is None:
            dataset = self.external_config_dict.get("dataset", DEFAULT_DATASET)
        return super()._get_model_and_dataset(model, dataset)

    def _load_internal_config_dict(self, model, model_class, dataset) -> None:
        if model in SEQUENCE_AGNOSTIC_MODELS:
            # RecBole's popularity ranker reads only each row's target item: it runs on the
            # sequential split (RecBole's sequential defaults) and is evaluated like the rest.
            model_class = SimpleNamespace(type=ModelType.SEQUENTIAL)
        super()._load_internal_config_dict(model, model_class, dataset)
        self.internal_config_dict["data_path"] = str(default_data_path())
        for path in [
            PROPERTIES / "overall.yaml",
            PROPERTIES / "model" / f"{model}.yaml",
            PROPERTIES / "dataset" / f"{dataset}.yaml",
        ]:
            if path.is_file():
                loaded = self._update_internal_config_dict(str(path)) or {}
                if path.parent.name == "dataset":
                    dataset_keys = self.parameters["Dataset"]
                    dataset_keys += [k for k in loaded if k not in dataset_keys]
        self.internal_config_dict["MODEL_TYPE"] = model_class.type
        if model in SEQUENCE_AGNOSTIC_MODELS:
            self.internal_config_dict["epochs"] = 1  # one counting pass

    def _init_device(self) -> None:
        # RecBole's DDP path hard-codes NCCL and CUDA; without a GPU use gloo on the CPU,
        # so multi-process runs (and their tests) work on CPU machines too.
        cfg = self.final_config_dict
        if "local_rank" not in cfg or (cfg["use_gpu"] and torch.cuda.is_available()):
            return super()._init_device()
        torch.distributed.init_process_group(
            backend="gloo",
            rank=cfg["local_rank"] + cfg["offset"],
            world_size=cfg["world_size"],
            init_method=f"tcp://{cfg['ip']}:{cfg['port']}",
        )
        cfg["device"] = torch.device("cpu")
        cfg["single_spec"] = False
        if cfg["local_rank"] != 0:
            cfg.update(state="error", show_progress=False, verbose=False)

    @property
    def data_folder(self) -> Path:
        """``<data_path>/<dataset>`` (RecBole has already joined them)."""
        return Path(self["data_path"])

    # ------------------------------------------------------------------ checkpoints
    def __reduce_ex__(self, protocol):
        if _PICKLING_CHECKPOINT.get():
            return restore_config, (self.checkpoint_state(),)
        return super().__reduce_ex__(protocol)  # deepcopy, RecBole's dataset cache

    def __getitem__(self, item):
        sealed = self.__dict__.get("_sealed")
        if sealed:
            raise RuntimeError(sealed)
        return super().__getitem__(item)

    def checkpoint_state(self) -> dict:
        """The config as plain data (what a checkpoint stores): str/int/float/bool/None,
        lists, tuples, sets, dicts, ``torch.device`` and RecBole's enums; any other value
        is stored as its string (logged)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model,
            "dataset": self.dataset,
            "parameters": {k: [str(a) for a in v] for k, v in self.parameters.items()},
            "final_config_dict": {
                str(k): _plain(str(k), v) for k, v in self.final_config_dict.items()
            },
        }


# ---------------------------------------------------------------------- checkpoints
# A checkpoint stores its Config as plain data (Config.checkpoint_state), written inside
# checkpoint_pickling() (CDSRTrainer._save_checkpoint), so that it loads with
# torch.load(weights_only=True) and the allow-list checkpoint_safe_globals(). Torch's
# process-wide default is never changed.
CHECKPOINT_FORMAT = "recbole_cdsr.config/1"
LOADER = "recbole_cdsr.quick_start.load_data_and_model"
_PICKLING_CHECKPOINT = contextvars.ContextVar("recbole_cdsr_pickling", default=False)
_LOADING_CHECKPOINT = contextvars.ContextVar("recbole_cdsr_loading", default=False)


# RecBole's enums a final config holds (stored by value; the class is allow-listed).
CHECKPOINT_ENUMS = (ModelType, InputType, EvaluatorType, FeatureType, FeatureSource)


def _plain(key: str, value):
    """``value`` as checkpoint data (see Config.checkpoint_state)."""
    if value is None or isinstance(value, (bool, int, float, str, torch.device)):
        return value
    if isinstance(value, CHECKPOINT_ENUMS):
        return value
    if isinstance(value, (list, tuple, set)):
        return type(value)(_plain(key, v) for v in value)
    if isinstance(value, dict):
        return {_plain(key, k): _plain(key, v) for k, v in value.items()}
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy/torch scalar
        return value.item()
    logger.warning(
        "checkpoint config: %s=%r (%s) is stored as its string", key, value, type(value)
    )
    return str(value)


def checkpoint_safe_globals() -> list:
    """What a checkpoint may name besides torch's own weights-only types: our config
    rebuilder and RecBole's enums (their values only)."""
    return [restore_config, *CHECKPOINT_ENUMS]


@contextlib.contextmanager
def checkpoint_pickling():
    """Inside, a pickled Config is written as plain data (Config.checkpoint_state)."""
    token = _PICKLING_CHECKPOINT.set(True)
    try:
        yield
    finally:
        _PICKLING_CHECKPOINT.reset(token)


@contextlib.contextmanager
def checkpoint_loading():
    """Inside, ``torch.load(weights_only=True)`` accepts our checkpoints (the allow-list
    of checkpoint_safe_globals) and their Config comes back usable; a checkpoint's Config
    unpickled anywhere else is sealed (see restore_config)."""
    token = _LOADING_CHECKPOINT.set(True)
    safe = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    try:
        with safe(checkpoint_safe_globals()) if safe else contextlib.nullcontext():
            yield
    finally:
        _LOADING_CHECKPOINT.reset(token)


def restore_config(state: dict) -> Config:
    """Rebuilds a Config from Config.checkpoint_state (called by the unpickler).

    Outside checkpoint_loading() (e.g. RecBole's own ``recbole.quick_start.
    load_data_and_model``, which would build a plain SequentialDataset and rank over all
    items) the Config is sealed: reading any key raises RuntimeError naming our loader.

    Raises:
        ValueError: ``state`` is not CHECKPOINT_FORMAT data.
    """
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"checkpoint config: expected format {CHECKPOINT_FORMAT!r}, got {found!r}"
        )
    config = Config.__new__(Config)
    config.__dict__.update(model=state["model"], dataset=state["dataset"])
    if not _LOADING_CHECKPOINT.get():
        config.__dict__["_sealed"] = (
            f"this checkpoint ({state['model']} on {state['dataset']}) was written by "
            f"recbole_cdsr: load it with {LOADER}(path). RecBole's own loader would "
            "build a plain SequentialDataset and rank over all items, not this run's "
            "per-domain protocol, and give different numbers."
        )
        return config
    config.__dict__.update(
        parameters={k: list(v) for k, v in state["parameters"].items()},
        final_config_dict=dict(state["final_config_dict"]),
        model_class=None,  # set by the loader (get_model), not by the unpickler
    )
    return config
