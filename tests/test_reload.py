"""Checkpoint reload in a fresh Python process (issue 14 §4), for SASRec and every
package model: ``load_data_and_model`` + evaluation give the training run's test metrics
exactly. One training run per model, shared by its tests."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recbole_cdsr.quick_start import load_data_and_model, run_recbole_cdsr
from recbole_cdsr.utils import get_trainer

from conftest import REPO, tiny_config
from test_adarec import adarec_config
from test_i2vae import SMALL as I2VAE_SMALL
from test_llmcdsr import LLM, NAME as LLM_DATASET, llm_root  # noqa: F401  (fixture)
from test_seedrec import cat_path, seedrec_config  # noqa: F401  (fixture)

# model -> (dataset, fixture giving data_path, config_dict builder)
RUNS = {
    "SASRec": ("tiny", "tiny_path", lambda root: tiny_config(root)),
    "I2VAE": ("tiny", "tiny_path", lambda root: tiny_config(
        root, **I2VAE_SMALL, user_inter_num_interval="[0,60]")),
    "ADARec": ("tiny", "tiny_path", lambda root: adarec_config(root)),
    "SyNCRec": ("tiny", "tiny_path", lambda root: tiny_config(
        root, n_experts=3, cross_expert_ratio=0.67)),
    "LLMCDSR": (LLM_DATASET, "llm_root", lambda root: tiny_config(root, **LLM)),
    "SeeDRec": ("tiny", "cat_path", lambda root: seedrec_config(root)),
}

# Runs in a new interpreter: nothing of the training process (numpy aliases set by
# Config.__init__, imported models, caches in memory) is there.
RELOAD_SCRIPT = """
import json, sys
from recbole_cdsr.quick_start import load_data_and_model, results_to_nested
from recbole_cdsr.utils import get_trainer
config, model, _, _, _, test = load_data_and_model(sys.argv[1])
trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
result = results_to_nested(trainer.evaluate(test, load_best_model=False))
print("RELOADED " + json.dumps(result))
"""


@pytest.fixture(scope="module", params=list(RUNS))
def trained(request, tmp_path_factory):
    """(model, result of one training run, its working folder)."""
    model = request.param
    dataset, root_fixture, make_config = RUNS[model]
    root = request.getfixturevalue(root_fixture)
    work = tmp_path_factory.mktemp(f"reload-{model}")
    config = make_config(root)
    config["checkpoint_dir"] = str(work / "saved")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["pytest"])
        mp.chdir(work)
        result = run_recbole_cdsr(model, dataset, config_dict=config)
    return model, result, work


def run_python(code: str, *args, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_reload_in_a_fresh_process_gives_identical_test_metrics(trained):
    model, result, work = trained
    proc = run_python(RELOAD_SCRIPT, result["saved_model_file"], cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RELOADED ")][-1]
    reloaded = json.loads(line[len("RELOADED "):])
    assert reloaded == result["test"], model


def test_checkpoint_holds_the_config_as_plain_data(trained):
    # A plain weights-only load names only our rebuilder and RecBole's enums.
    _, result, _ = trained
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(result["saved_model_file"])
    assert set(unsafe) <= {
        "recbole_cdsr.config.restore_config",
        *(f"recbole.utils.enum_type.{e}" for e in
          ("ModelType", "InputType", "EvaluatorType", "FeatureType", "FeatureSource")),
    }


# Checked once, on the SASRec checkpoint (the same training run as the SASRec case above).
SASREC_ONLY = pytest.mark.parametrize("trained", ["SASRec"], indirect=True)


@SASREC_ONLY
def test_recbole_own_loader_refuses_with_a_message_naming_ours(trained, monkeypatch):
    _, result, work = trained
    from recbole.quick_start import load_data_and_model as recbole_load

    monkeypatch.chdir(work)
    # torch >= 2.6 default (weights only): our rebuilder is not on torch's own list
    with pytest.raises(pickle.UnpicklingError, match="recbole_cdsr.config.restore_config"):
        recbole_load(result["saved_model_file"])
    # forced full unpickling: the config comes back sealed and names our loader
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(RuntimeError, match=r"recbole_cdsr\.quick_start\.load_data_and_model"):
        recbole_load(result["saved_model_file"])


@SASREC_ONLY
def test_trainer_resumes_from_a_checkpoint_with_weights_only(trained, monkeypatch):
    _, result, work = trained
    monkeypatch.chdir(work)
    config, model, _, _, _, _ = load_data_and_model(result["saved_model_file"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.resume_checkpoint(result["saved_model_file"])
    assert trainer.start_epoch == 1  # one epoch trained, resumed after it
