"""Security (issue 15): what listens (ray on loopback only), what is loaded (checkpoints
with weights_only and an allow-list), what is executed (command-line values are literals,
no model code unless allowed)."""

import importlib.util
import ipaddress
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from recbole_cdsr.config import Config
from recbole_cdsr.literal import format_literal, parse_literal
from recbole_cdsr.model.sequential_recommender import llmcdsr_stages as stages
from recbole_cdsr.quick_start import load_data_and_model
from recbole_cdsr.trainer import CDSRTrainer
from recbole_cdsr.utils import create_dataset, data_preparation, get_model

from conftest import REPO, tiny_config

INJECTION = "__import__('pathlib').Path('pwned').touch()"


def load_script(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ what listens
def _is_127_0_0_1(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    if address.version == 6 and address.ipv4_mapped is not None:  # ::ffff:127.0.0.1
        address = address.ipv4_mapped
    return address == ipaddress.ip_address("127.0.0.1")


def test_local_ray_cluster_listens_on_127_0_0_1_only():
    ray = pytest.importorskip("ray")
    psutil = pytest.importorskip("psutil")
    from recbole_cdsr.tuning import start_local_ray

    if ray.is_initialized():
        ray.shutdown()
    me = psutil.Process()

    def listening() -> list[tuple[str, int, int, str]]:
        procs = {p.pid: p for p in [me, *me.children(recursive=True)]}
        out = []
        for conn in psutil.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.pid in procs:
                out.append((conn.laddr.ip, conn.laddr.port, conn.pid, procs[conn.pid].name()))
        return out

    before = set(listening())  # e.g. another test's sockets in this process
    start_local_ray(num_cpus=2)
    try:
        @ray.remote
        def worker_pid():
            return os.getpid()

        workers = set(ray.get([worker_pid.remote() for _ in range(2)]))
        sockets = [s for s in listening() if s not in before]
        names = {name for *_, name in sockets}
        assert {"gcs_server", "raylet"} <= names, sockets  # the cluster is what we listed
        assert workers <= {pid for _, _, pid, _ in sockets}, (workers, sockets)
        exposed = [s for s in sockets if not _is_127_0_0_1(s[0])]
        assert not exposed, f"listening beyond 127.0.0.1: {exposed}"
    finally:
        ray.shutdown()


def test_ray_tuning_starts_its_cluster_through_start_local_ray(tiny_path, monkeypatch,
                                                               tmp_path):
    ray = pytest.importorskip("ray")
    from recbole_cdsr import tuning

    if ray.is_initialized():
        ray.shutdown()
    calls = []

    def fake_start(**kwargs):
        calls.append(kwargs)
        raise KeyboardInterrupt  # stop before any trial

    monkeypatch.setattr(tuning, "start_local_ray", fake_start)
    space = tmp_path / "space.hyper"
    space.write_text("learning_rate choice [0.01]\n")
    with pytest.raises(KeyboardInterrupt):
        tuning.run_ray("SASRec", "tiny", [], tiny_config(tiny_path), space, 1, "random")
    assert calls == [{"dashboard": False}]  # dashboard off unless asked


# ------------------------------------------------------------------ what is loaded
class _Payload:
    """Unpickling this runs code: it touches a file (stands for any command)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


@pytest.fixture
def evil_checkpoint(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pth"
    torch.save({"config": _Payload(marker), "state_dict": {}}, path)
    return path, marker


def test_load_data_and_model_refuses_a_pickle_payload(evil_checkpoint):
    path, marker = evil_checkpoint
    with pytest.raises(pickle.UnpicklingError, match="trust_checkpoint=True"):
        load_data_and_model(path)
    assert not marker.exists()


def test_only_the_explicit_flag_loads_without_weights_only(evil_checkpoint, monkeypatch):
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        raise ConnectionAbortedError  # stop after the call

    monkeypatch.setattr(torch, "load", spy)
    for trust in (False, True):
        with pytest.raises(ConnectionAbortedError):
            load_data_and_model(evil_checkpoint[0], trust_checkpoint=trust)
    assert seen == [True, False]


def test_importing_recbole_cdsr_leaves_a_plain_torch_load_safe(evil_checkpoint):
    path, marker = evil_checkpoint
    code = (
        "import os, pickle, sys, torch\n"
        "import recbole_cdsr, recbole_cdsr.quick_start, recbole_cdsr.tuning\n"
        "print('ENV', os.environ.get('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'))\n"
        "try:\n    torch.load(sys.argv[1])\nexcept pickle.UnpicklingError:\n"
        "    print('REFUSED')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ENV None" in proc.stdout and "REFUSED" in proc.stdout, proc.stdout
    assert not marker.exists()


@pytest.mark.skipif(tuple(map(int, torch.__version__.split(".")[:2])) < (2, 6),
                    reason="torch < 2.6 loads with weights_only=False by default")
def test_trainer_best_model_load_refuses_a_pickle_payload(tiny_path, evil_checkpoint):
    path, marker = evil_checkpoint
    config = Config("SASRec", "tiny", config_dict=tiny_config(tiny_path))
    train, _, test = data_preparation(config, create_dataset(config))
    trainer = CDSRTrainer(config, get_model("SASRec")(config, train._dataset))
    with pytest.raises(pickle.UnpicklingError):
        trainer.evaluate(test, load_best_model=True, model_file=str(path))
    assert not marker.exists()


# ------------------------------------------------------------------ what is executed
@pytest.mark.parametrize("text, value", [
    ("3", 3), ("-2", -2), ("1e-3", 0.001), ("0.5", 0.5), ("True", True), ("false", False),
    ("None", None), ("[5, 10]", [5, 10]),
    ("{'num': 99, 'pool': 'all'}", {"num": 99, "pool": "all"}),
    ("(1, 2)", (1, 2)), ("'3'", "3"), ("SASRec", "SASRec"), ("mean/ndcg@10", "mean/ndcg@10"),
    ("{1, 2}", "{1, 2}"), (INJECTION, INJECTION), ("1+2", "1+2"),
])
def test_parse_literal(text, value):
    parsed = parse_literal(text)
    assert parsed == value and type(parsed) is type(value)


def check_typed_and_nothing_ran(config, tmp_path):
    assert config["foo"] == INJECTION  # the string, never evaluated
    assert not (tmp_path / "pwned").exists()
    assert config["epochs"] == 3 and config["learning_rate"] == 0.001
    assert config["use_gpu"] is False and config["topk"] == [5, 10]
    assert config["eval_candidates"] == {"num": 9, "pool": "all"}
    assert config["valid_metric"] == "mean/ndcg@10"


CLI = [f"--foo={INJECTION}", "--epochs=3", "--learning_rate=1e-3", "--use_gpu=false",
       "--topk=[5,10]", "--eval_candidates={'num': 9, 'pool': 'all'}",
       "--valid_metric=mean/ndcg@10"]


def test_command_line_values_are_literals_never_code(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["run_recbole_cdsr.py", *CLI])
    check_typed_and_nothing_ran(Config("SASRec", "ml100k_tiny"), tmp_path)


def test_cli_config_values_are_literals_never_code(tmp_path):
    script = load_script(REPO / "run_recbole_cdsr.py", "run_recbole_cdsr_script")
    config_dict = script.cli_config(CLI)
    assert not (tmp_path / "pwned").exists()
    check_typed_and_nothing_ran(Config("SASRec", "ml100k_tiny", config_dict=config_dict),
                                tmp_path)


def test_benchmark_grid_values_reach_the_command_line_as_the_same_literals(tmp_path):
    bench = load_script(REPO / "benchmarks" / "run.py", "bench_run")
    values = {"epochs": 2, "lr": 1e-3, "flag": True, "none": None, "name": "3",
              "eval_candidates": {"num": 9, "strict": False, "pool": None},
              "foo": INJECTION, "topk": [5, 10]}
    grid = {"models": ["SASRec"], "datasets": ["tiny"], "seeds": [1], "config": values}
    cell = bench.cells(grid)[0]
    cmd = bench.cell_command(grid, cell, tmp_path / "r.json")
    parsed = dict(arg[2:].split("=", 1) for arg in cmd if arg.startswith("--"))
    for key, value in values.items():
        assert parse_literal(parsed[key]) == value, key
    grid["config"] = {"bad": {1, 2}}
    with pytest.raises(ValueError, match="'bad'"):
        bench.cell_command(grid, cell, tmp_path / "r.json")
    assert format_literal("SASRec") == "SASRec"


# ------------------------------------------------------------------ remote code
class _Recorder:
    """Stands for a Hugging Face loader: records the keyword arguments it got."""

    calls: list = []

    def __init__(self, *args, **kwargs):
        _Recorder.calls.append(kwargs)
        self.padding_side = self.truncation_side = None
        self.pad_token, self.eos_token = None, "</s>"

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        return cls(*args, **kwargs)

    def get_sentence_embedding_dimension(self):
        return 4

    def to(self, device):
        return self

    def eval(self):
        return self


@pytest.fixture
def fake_hf(monkeypatch):
    _Recorder.calls = []
    st = types.ModuleType("sentence_transformers")
    st.SentenceTransformer = _Recorder
    tf = types.ModuleType("transformers")
    tf.AutoTokenizer = tf.AutoModelForCausalLM = _Recorder
    monkeypatch.setitem(sys.modules, "sentence_transformers", st)
    monkeypatch.setitem(sys.modules, "transformers", tf)
    return _Recorder.calls


def test_sentence_encoder_runs_no_model_code_unless_allowed(fake_hf, tmp_path):
    config = {"text_encoder": str(tmp_path), "use_gpu": False, "text_encoder_batch_size": 8,
              "text_encoder_trust_remote_code": False}
    stages.make_encoder(config)
    config["text_encoder_trust_remote_code"] = True
    stages.make_encoder(config)
    assert [c["trust_remote_code"] for c in fake_hf] == [False, True]
    defaults = Config("LLMCDSR", "ml100k_tiny")
    assert defaults["text_encoder_trust_remote_code"] is False
    assert defaults["llm_revision"] is None


def test_hf_generator_pins_the_revision_and_runs_no_model_code(fake_hf):
    stages.HFGenerator("org/some-llm", device="cpu", revision="0123abc")
    assert len(fake_hf) == 2  # tokenizer and model
    for kwargs in fake_hf:
        assert kwargs["revision"] == "0123abc" and kwargs["trust_remote_code"] is False
        assert kwargs["local_files_only"] is False
    config = {"llm_generator": "hf", "llm_model": "org/some-llm", "llm_revision": "0123abc"}
    assert stages.generator_id(config) == "hf-some-llm_0123abc"


def test_ordinary_pickling_and_copies_of_a_config_are_unchanged(tiny_path):
    # Only checkpoints store the Config as plain data; a deepcopy or RecBole's dataset
    # cache (plain pickle) gives back a working Config, never a sealed one.
    import copy

    config = Config("SASRec", "tiny", config_dict=tiny_config(tiny_path))
    for clone in (copy.deepcopy(config), pickle.loads(pickle.dumps(config))):
        assert clone["epochs"] == config["epochs"] and clone.model_class is config.model_class
