"""Config: RecBole's Config plus recbole_cdsr's yaml layers (RecBole-GNN pattern).

Precedence, lowest first: RecBole's internal yaml < recbole_cdsr ``properties/overall.yaml``
< ``properties/model/<Model>.yaml`` < ``properties/dataset/<dataset>.yaml`` < config files
< config dict < command line.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from recbole.config import Config as RecBoleConfig
from recbole.utils import ModelType

from recbole_cdsr.utils import PROPERTIES, default_data_path, get_model

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
