"""Config layering, defaults, and import hygiene."""

import subprocess
import sys

import yaml

from recbole_cdsr.config import DEFAULT_DATASET, Config
from recbole_cdsr.utils import PROPERTIES


def test_precedence_of_yaml_layers(tmp_path, monkeypatch):
    # RecBole's SASRec.yaml has hidden_size 64; our overall sets valid_metric; the
    # food_kitchen yaml sets MAX_ITEM_LIST_LENGTH 50; files < dict < command line.
    config = Config("SASRec", "food_kitchen")
    assert config["hidden_size"] == 64
    assert config["valid_metric"] == "NDCG@10"
    assert config["benchmark_filename"] == ["train", "valid", "test"]
    assert config["domain_mask"] is True and config["train_neg_sample_args"]["distribution"] == "none"

    overrides = tmp_path / "o.yaml"
    overrides.write_text(yaml.safe_dump({"hidden_size": 16, "MAX_ITEM_LIST_LENGTH": 20, "epochs": 3}))
    config = Config("SASRec", "food_kitchen", [str(overrides)], {"epochs": 5})
    assert (config["hidden_size"], config["MAX_ITEM_LIST_LENGTH"], config["epochs"]) == (16, 20, 5)
    monkeypatch.setattr(sys, "argv", ["x", "--epochs=7"])
    config = Config("SASRec", "food_kitchen", [str(overrides)], {"epochs": 5})
    assert config["epochs"] == 7


def test_default_dataset_and_data_path(monkeypatch, tmp_path):
    config = Config("SASRec")
    assert config["dataset"] == DEFAULT_DATASET == "ml100k_genre"
    monkeypatch.setenv("RECBOLE_CDSR_DATA", str(tmp_path))
    assert Config("SASRec", "beauty")["data_path"] == str(tmp_path / "beauty")


def test_dataset_keys_do_not_leak_into_recbole_globals():
    from recbole.config.configurator import dataset_arguments

    before = list(dataset_arguments)
    config = Config("SASRec", "food_kitchen")
    assert "benchmark_filename" in config.parameters["Dataset"]
    assert dataset_arguments == before


def test_every_registered_dataset_has_a_yaml():
    from recbole_cdsr.data.registry import DATASETS

    missing = [n for n in DATASETS if not (PROPERTIES / "dataset" / f"{n}.yaml").is_file()]
    assert missing == []


def test_training_imports_neither_ray_nor_hyperopt():
    code = (
        "import sys, recbole_cdsr.quick_start, recbole_cdsr.trainer, recbole_cdsr.utils;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'hyperopt')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_getting_a_model_leaves_anomaly_detection_off():
    import torch

    from recbole_cdsr.utils import get_model

    get_model("SASRec")
    assert not torch.is_anomaly_enabled()
