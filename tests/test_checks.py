"""Start-of-run checks (issue 14 section 2): every failing setting is refused before the
first training batch, with the bad value, the allowed values and the fix."""

import importlib.util
import json
import logging
import os
import re
import sys

import pytest
import torch
from recbole.trainer import Trainer

from recbole_cdsr.checks import ConfigCheckError, check_config, check_device
from recbole_cdsr.config import Config
from recbole_cdsr.quick_start import run_recbole_cdsr, write_result
from recbole_cdsr.trainer import CDSRTrainer
from recbole_cdsr.utils import create_dataset, data_preparation, get_model

from conftest import REPO, tiny_config


@pytest.fixture
def no_training(monkeypatch):
    """Any training batch fails the test: the checks must fire before it."""

    def trained(*args, **kwargs):
        raise AssertionError("training started before the bad setting was refused")

    monkeypatch.setattr(Trainer, "_train_epoch", trained)


@pytest.fixture
def no_data(monkeypatch, no_training):
    """Reading the dataset fails the test: config-only checks come first."""

    def read(*args, **kwargs):
        raise AssertionError("data read before the bad setting was refused")

    monkeypatch.setattr("recbole_cdsr.quick_start.create_dataset", read)


@pytest.fixture
def no_splits(monkeypatch, no_training):
    """Building the splits (where I2VAE trains LightGCN) fails the test too."""

    def split(*args, **kwargs):
        raise AssertionError("splits built before the bad setting was refused")

    monkeypatch.setattr("recbole_cdsr.quick_start.data_preparation", split)


def config_of(tiny_path, model="SASRec", **overrides):
    return Config(model, "tiny", config_dict=tiny_config(tiny_path, **overrides))


def refused(tiny_path, pattern, model="SASRec", **overrides):
    with pytest.raises(ConfigCheckError, match=pattern) as info:
        run_recbole_cdsr(model, "tiny", config_dict=tiny_config(tiny_path, **overrides))
    return str(info.value)


# ------------------------------------------------------------------ valid_metric


def test_valid_metric_missing_from_metrics(tiny_path, no_data):
    message = refused(tiny_path, r"valid_metric 'MAP@12' is not computed", valid_metric="MAP@12")
    assert "add map to metrics" in message and "'ndcg@10'" in message


def test_valid_metric_cutoff_missing_from_topk(tiny_path, no_data):
    message = refused(tiny_path, r"'NDCG@12' is not computed", valid_metric="NDCG@12")
    assert "add 12 to topk" in message and "[1, 5, 10, 12, 20]" in message


def test_llmcdsr_domain_select_metric_is_checked(tiny_path, no_data):
    refused(tiny_path, r"domain_select_metric 'hit@50' is not computed: add 50 to topk",
            model="LLMCDSR", per_domain_selection=True, domain_select_metric="hit@50")


def test_valid_metric_unknown_subset(tiny_path, no_splits):
    message = refused(tiny_path, r"'foo' is not a subset of tiny", valid_metric="foo/ndcg@10")
    for name in ("'drama'", "'other'", "'mean'", "'both'", "'drama.both'"):
        assert name in message
    refused(tiny_path, r"did you mean 'drama'", valid_metric="dramma/ndcg@10")


# ------------------------------------------------------------------ ranked pools


def test_topk_larger_than_candidate_pool(tiny_path, no_splits):
    refused(
        tiny_path, r"topk \[1, 5, 10\] has \[10\] larger than the smallest ranked pool, 6 items",
        topk=[1, 5, 10], valid_metric="NDCG@5", eval_candidates={"num": 5},
    )


def test_topk_larger_than_smallest_domain(tiny_path, no_splits):
    config = config_of(tiny_path)
    dataset = create_dataset(config)
    sizes = torch.bincount(dataset.item_domain[1:]).tolist()
    smallest = min(sizes)
    message = refused(
        tiny_path, rf"larger than the smallest ranked pool, {smallest} items of domain",
        topk=[10, smallest + 1],
    )
    assert f"[{smallest + 1}]" in message


def test_candidates_larger_than_a_domain_fail_at_start(tiny_path, no_splits):
    config = config_of(tiny_path)
    sizes = torch.bincount(create_dataset(config).item_domain[1:]).tolist()
    refused(
        tiny_path, rf"eval_candidates.num={min(sizes)} but pool 'domain' of '\w+' has only",
        eval_candidates={"num": min(sizes)},
    )


def test_candidates_with_history_exclusion_fail_at_start(tiny_path, no_training):
    # fits the domain sizes, but not once each row's history is removed
    config = config_of(tiny_path)
    sizes = torch.bincount(create_dataset(config).item_domain[1:]).tolist()
    refused(
        tiny_path, r"eligible items",
        eval_candidates={"num": min(sizes) - 1, "exclude": "history"}, MAX_ITEM_LIST_LENGTH=50,
    )


# ------------------------------------------------------------------ training settings


def test_bpr_gets_default_negatives_and_trains(tiny_path, caplog):
    caplog.set_level(logging.INFO, logger="recbole_cdsr.checks")
    result = run_recbole_cdsr(
        "SASRec", "tiny", config_dict=tiny_config(tiny_path, loss_type="BPR")
    )
    assert result["time"]["epochs"] == 1
    assert all(torch.isfinite(torch.tensor(result["train_loss"])))
    assert result["config"]["train_neg_sample_args"]["distribution"] == "uniform"
    assert result["config"]["train_neg_sample_args"]["sample_num"] == 1
    assert "loss_type BPR without train_neg_sample_args" in caplog.text


def test_pairwise_model_without_negatives_gets_the_default(tiny_path, caplog):
    caplog.set_level(logging.INFO, logger="recbole_cdsr.checks")
    config = config_of(tiny_path, "BPR")  # RecBole's general BPR model: pairwise, no loss_type
    assert config["train_neg_sample_args"]["distribution"] == "none"
    check_config(config)
    assert config["train_neg_sample_args"]["distribution"] == "uniform"
    assert "BPR (pairwise) without train_neg_sample_args" in caplog.text
    # CE models keep sampling nothing (RecBole requires it)
    config = config_of(tiny_path)
    check_config(config)
    assert config["train_neg_sample_args"]["distribution"] == "none"


@pytest.mark.parametrize("epochs", [0, -3])
def test_epochs_must_be_positive(tiny_path, no_data, epochs):
    refused(tiny_path, rf"epochs must be a positive int, got {epochs}; set --epochs=N",
            epochs=epochs)


def test_stage_budgets_are_logged(tiny_path, caplog):
    caplog.set_level(logging.INFO, logger="recbole_cdsr.checks")
    check_config(config_of(tiny_path, "SeeDRec", dm_epochs=7, pretrain_epochs=3, epochs=2))
    line = next(r.message for r in caplog.records if "stage budgets" in r.message)
    assert "dm_epochs=7" in line and "pretrain_epochs=3" in line and "epochs=2" in line
    assert "--epochs bounds only the last" in line


@pytest.mark.parametrize("model, key, value", [
    ("SeeDRec", "dm_epochs", 0), ("SeeDRec", "pretrain_epochs", -1),
    ("LLMCDSR", "pretrain_epochs", 0), ("I2VAE", "psg_epochs", 2.5),
])
def test_stage_budgets_are_checked_before_any_stage(tiny_path, no_data, model, key, value):
    refused(tiny_path, rf"{model}: {key} \(.*\) must be an int >= \d, got {value}; set it in "
            rf"{model}.yaml or --{key}=", model=model, **{key: value})


# ------------------------------------------------------------------ evaluation settings


def test_conflicting_evaluation_settings(tiny_path, no_data):
    refused(tiny_path, r"domain_mask: False contradicts .* pool: 'domain'",
            domain_mask=False, eval_candidates={"num": 9})
    refused(tiny_path, r"domain_mask: True contradicts .* pool: 'all'",
            domain_mask=True, eval_candidates={"num": 9, "pool": "all"})
    eval_args = {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "uni100"}
    refused(tiny_path, r"'uni100'.*eval_candidates: \{num: 100, pool: all\}", eval_args=eval_args)
    # the package default domain_mask does not conflict: the candidates' pool decides
    check_config(config_of(tiny_path, eval_candidates={"num": 9, "pool": "all"}))


# ------------------------------------------------------------------ model name, device


@pytest.mark.parametrize(
    "name, near", [("I2Vae", "I2VAE"), ("sasrec", "SASRec"), ("SASRek", "SASRec")]
)
def test_wrong_model_name_suggests_the_near_match(name, near):
    with pytest.raises(ValueError, match=rf"unknown model '{name}'. Did you mean '{near}'"):
        get_model(name)


def test_cli_wrong_model_case_is_a_usage_error(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("run_cli", REPO / "run_recbole_cdsr.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(sys, "argv", ["run_recbole_cdsr.py", "--model=I2Vae"])
    with pytest.raises(SystemExit) as info:
        script.main()
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert "Did you mean 'I2VAE'" in err and "Traceback" not in err and "AttributeError" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_gpu_id_without_gpu_is_logged(tiny_path, caplog):
    caplog.set_level(logging.INFO, logger="recbole_cdsr.checks")
    check_device(config_of(tiny_path, gpu_id="0"))
    assert "gpu_id=0 given, but no CUDA device is available" in caplog.text
    assert "this run uses the CPU" in caplog.text


# ------------------------------------------------------------------ files


def test_unwritable_result_file_fails_before_training(tiny_path, tmp_path, no_data):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    refused(tiny_path, r"result_file=.*not_a_folder/r.json.*cannot write",
            result_file=str(blocker / "r.json"))
    refused(tiny_path, r"checkpoint_dir=.*cannot write", checkpoint_dir=str(blocker / "ckpt"))
    refused(tiny_path, r"result_file=.* is a folder", result_file=str(tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_result_folder_fails_before_training(tiny_path, tmp_path, no_training):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        refused(tiny_path, r"cannot write in", result_file=str(folder / "r.json"))
    finally:
        folder.chmod(0o700)


def strict_load(path):
    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(path.read_text(), parse_constant=reject)


def test_result_json_is_strict(tmp_path):
    path = write_result({"a": float("-inf"), "b": [1.5, float("nan")], "c": {"d": float("inf")}},
                        tmp_path / "out" / "r.json")
    assert strict_load(path) == {"a": None, "b": [1.5, None], "c": {"d": None}}


def test_run_without_validation_writes_strict_json(tiny_path, tmp_path):
    # eval_step 0: RecBole never validates, so its best_valid_score stays -inf
    path = tmp_path / "r.json"
    run_recbole_cdsr("SASRec", "tiny",
                     config_dict=tiny_config(tiny_path, eval_step=0, result_file=str(path)))
    assert strict_load(path)["best_valid_score"] is None


# ------------------------------------------------------------------ checkpoint names


def test_checkpoint_names_are_unique_per_run(tiny_path):
    config = config_of(tiny_path)
    train, _, _ = data_preparation(config, create_dataset(config))
    model = get_model("SASRec")(config, train._dataset)
    names = {CDSRTrainer(config, model).saved_model_file for _ in range(3)}
    assert len(names) == 3
    for name in names:
        assert re.fullmatch(rf".*SASRec-.+-{os.getpid()}-[0-9a-f]{{6}}\.pth", name)
