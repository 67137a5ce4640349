"""Speed-ups that must not change the computation (issue 13): length-bucketed batches,
fused RecBole layers, the precomputed domain mask."""

import random

import pytest
import torch

from recbole_cdsr.config import Config
from recbole_cdsr.data.bucketing import (
    RECBOLE_LENGTH_INVARIANT,
    LengthBucketBatchSampler,
    LengthBucketTrainDataLoader,
    is_length_invariant,
)
from recbole_cdsr.utils import create_dataset, data_preparation, get_model

from conftest import tiny_config

WIDTH = 20
# extra config per model (FPMC is pairwise: BPR with one sampled negative)
MODEL_KEYS = {
    "FPMC": {"loss_type": "BPR", "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1}},
}
INVARIANT = sorted(m for m, ok in RECBOLE_LENGTH_INVARIANT.items() if ok)


def build(tiny_path, model, **overrides):
    keys = {"MAX_ITEM_LIST_LENGTH": WIDTH, **MODEL_KEYS.get(model, {}), **overrides}
    config = Config(model, "tiny", config_dict=tiny_config(tiny_path, **keys))
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    return config, train, test


def loss_and_grads(model, batch):
    torch.manual_seed(0)
    random.seed(0)  # BERT4Rec-style models mask with python's random
    losses = model.calculate_loss(batch)
    loss = sum(losses) if isinstance(losses, tuple) else losses
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


@pytest.mark.parametrize("model_name", INVARIANT)
def test_cut_batch_gives_the_padded_loss_and_gradients(tiny_path, model_name):
    config, train, _ = build(tiny_path, model_name)
    assert isinstance(train, LengthBucketTrainDataLoader)
    _, stock, _ = build(tiny_path, model_name, length_buckets=False)
    assert type(stock) is not LengthBucketTrainDataLoader
    lengths = train._dataset.inter_feat["item_length"]
    # rows of mixed lengths 1..12 in a batch padded to 20: the loader cuts to width 12
    short = torch.nonzero(lengths <= 12).flatten()
    rows = short[torch.randperm(len(short), generator=torch.Generator().manual_seed(0))[:94]]
    rows = torch.cat([rows, torch.nonzero(lengths == 12)[0], torch.nonzero(lengths == 1)[0]])
    cut = train.collate_fn(rows.tolist())
    assert cut["item_id_list"].shape[1] == cut["timestamp_list"].shape[1] == 12
    # the same rows at full width (same sampled negatives): the cut columns padded back
    padded = type(cut)({k: v.clone() for k, v in cut.interaction.items()})
    for field in train.list_fields:
        padded[field] = torch.nn.functional.pad(cut[field], (0, WIDTH - 12))
    assert torch.equal(padded["item_id_list"], stock.collate_fn(rows.tolist())["item_id_list"])
    torch.manual_seed(1)
    model = get_model(model_name)(config, train._dataset)
    model.eval()  # dropout off; calculate_loss still builds the training loss
    loss_full, grads_full = loss_and_grads(model, padded)
    loss_cut, grads_cut = loss_and_grads(model, cut)
    assert torch.allclose(loss_full, loss_cut, rtol=1e-5, atol=1e-6)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for name, g_full, g_cut in zip(names, grads_full, grads_cut):
        assert torch.allclose(g_full, g_cut, rtol=1e-4, atol=1e-6), name


def test_left_padding_would_not_be_exact(tiny_path):
    # the exactness above rests on RecBole's left-aligned histories: cutting from the
    # other side (keeping the last 12 columns) changes SASRec's loss
    config, train, _ = build(tiny_path, "SASRec", length_buckets=False)
    lengths = train._dataset.inter_feat["item_length"]
    rows = torch.nonzero(lengths <= 12).flatten()[:96].tolist()
    batch = train.collate_fn(rows)
    assert bool((batch["item_id_list"][:, 12:] == 0).all())  # right padding
    model = get_model("SASRec")(config, train._dataset).eval()
    full = loss_and_grads(model, batch)[0]
    batch["item_id_list"] = batch["item_id_list"][:, -12:]
    assert not torch.allclose(full, loss_and_grads(model, batch)[0], atol=1e-4)


def test_bucketed_loader_batches_similar_lengths_and_cuts_them(tiny_path):
    config, train, _ = build(tiny_path, "SASRec", train_batch_size=64)
    assert isinstance(train, LengthBucketTrainDataLoader)
    lengths = train._dataset.inter_feat["item_length"]
    n_rows = len(lengths)
    seen, epochs = [], []
    for _ in range(2):
        order = []
        for batch in train:
            width = int(batch["item_length"].max())
            assert batch["item_id_list"].shape[1] == width
            assert batch["timestamp_list"].shape[1] == width
            # rows sorted by length: a batch spans at most two adjacent runs of lengths
            # (only rows with length == WIDTH can fill several batches)
            order.append(batch["item_length"].tolist())
            seen += batch["user_id"].tolist()
        epochs.append(order)
    assert len(seen) == 2 * n_rows and len(train) == -(-n_rows // 64)
    spans = [max(b) - min(b) for b in epochs[0]]
    assert sorted(spans)[len(spans) // 2] <= 1  # most batches hold one or two lengths
    assert epochs[0] != epochs[1]  # reshuffled between epochs
    # same seed, same batches
    _, again, _ = build(tiny_path, "SASRec", train_batch_size=64)
    assert [b["item_length"].tolist() for b in again] == epochs[0]


def test_sampler_visits_every_row_once_per_epoch():
    lengths = torch.tensor([5, 1, 3, 3, 9, 1, 2, 7, 7, 7, 4])
    sampler = LengthBucketBatchSampler(lengths, 4, True, torch.Generator().manual_seed(0))
    for _ in range(3):
        batches = list(sampler)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        assert len(batches) == len(sampler) == 3
    ordered = list(LengthBucketBatchSampler(lengths, 4, False, torch.Generator()))
    assert [[int(lengths[i]) for i in b] for b in ordered] == [[1, 1, 2, 3], [3, 4, 5, 7], [7, 7, 9]]


def test_width_dependent_models_keep_recbole_loader(tiny_path):
    assert not is_length_invariant(get_model("Caser"))
    _, train, _ = build(tiny_path, "Caser", MAX_ITEM_LIST_LENGTH=10)
    assert type(train) is not LengthBucketTrainDataLoader
    # our own models are excluded unless they declare it themselves
    class Child(get_model("SASRec")):
        pass

    assert is_length_invariant(get_model("SASRec")) and not is_length_invariant(Child)


def test_length_buckets_must_be_bool(tiny_path):
    with pytest.raises(TypeError, match="length_buckets must be True or False, got 'yes'"):
        build(tiny_path, "SASRec", length_buckets="yes")


def test_fused_gelu_is_recbole_erf_gelu():
    from recbole.model.layers import FeedForward

    from recbole_cdsr import _compat

    _compat.use_fused_layers(True)  # what every run's build does (fused_layers: True)
    layer = FeedForward(8, 16, 0.0, "gelu", 1e-12)
    assert layer.intermediate_act_fn.__func__ is _compat._fused_gelu
    x = torch.linspace(-8, 8, 4001, dtype=torch.float64).requires_grad_()
    ours, stock = _compat._fused_gelu(None, x), _compat._STOCK["gelu"](None, x)
    assert torch.allclose(ours, stock, rtol=1e-12, atol=1e-14)
    g_ours, = torch.autograd.grad(ours.sum(), x)
    g_stock, = torch.autograd.grad(stock.sum(), x)
    assert torch.allclose(g_ours, g_stock, rtol=1e-10, atol=1e-12)
    x32 = torch.randn(64, 50, 256)
    assert torch.allclose(layer.gelu(x32), _compat._STOCK["gelu"](None, x32), atol=1e-6)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_fused_dropout_keeps_torch_dropout_distribution(p):
    from recbole_cdsr import _compat

    _compat.use_fused_layers(True)
    drop = torch.nn.Dropout(p)
    assert type(drop).forward is _compat._uniform_mask_dropout
    torch.manual_seed(0)
    x = torch.full((400, 1000), 3.0, requires_grad=True)
    out = drop(x)
    kept = out != 0
    # 400k Bernoulli(1 - p) draws: the keep rate is within 5 standard errors
    rate = kept.double().mean().item()
    assert abs(rate - (1 - p)) < 5 * ((p * (1 - p)) / x.numel()) ** 0.5
    assert torch.allclose(out[kept], torch.tensor(3.0 / (1 - p)))
    out.sum().backward()
    assert torch.equal(x.grad != 0, kept) and torch.allclose(x.grad[kept], torch.tensor(1 / (1 - p)))
    # masks differ between calls; eval mode and p = 0 are the identity
    assert not torch.equal(drop(x) != 0, kept)
    drop.eval()
    assert torch.equal(drop(x), x)
    # torch's own dropout has the same keep rate and scale
    torch.manual_seed(0)
    stock = _compat._STOCK["dropout"](torch.nn.Dropout(p), x.detach())
    assert abs((stock != 0).double().mean().item() - rate) < 10 * ((p * (1 - p)) / x.numel()) ** 0.5
    assert torch.allclose(stock[stock != 0], torch.tensor(3.0 / (1 - p)))


def test_fused_dropout_in_place_and_switch_off():
    from recbole_cdsr import _compat

    x = torch.ones(1000)
    out = torch.nn.Dropout(0.5, inplace=True)(x)
    assert out is x and set(x.unique().tolist()) <= {0.0, 2.0}
    try:
        _compat.use_fused_layers(False)
        assert torch.nn.Dropout.forward is _compat._STOCK["dropout"]
        from recbole.model.layers import FeedForward

        assert FeedForward(8, 16, 0.0, "gelu", 1e-12).intermediate_act_fn.__func__ is _compat._STOCK["gelu"]
    finally:
        _compat.use_fused_layers(True)
    assert torch.nn.Dropout.forward is _compat._uniform_mask_dropout


def _old_domain_mask_eval(trainer, batched_data):
    """The per-batch [B, N] compare the domain mask used before the [D, N] table."""
    from recbole.trainer import Trainer

    interaction, scores, positive_u, positive_i = Trainer._full_sort_batch_eval(trainer, batched_data)
    item_domain = trainer.eval_collector.item_domain
    other = item_domain.unsqueeze(0) != item_domain[positive_i].unsqueeze(1)
    return interaction, scores.masked_fill(other, float("-inf")), positive_u, positive_i


def test_domain_mask_table_gives_the_old_mask_metrics(tiny_path, monkeypatch):
    from recbole_cdsr.trainer import CDSRTrainer

    config, train, test = build(tiny_path, "SASRec", eval_batch_size=16)
    torch.manual_seed(0)
    model = get_model("SASRec")(config, train._dataset)
    trainer = CDSRTrainer(config, model)
    new = trainer.evaluate(test, load_best_model=False)
    table = trainer._domain_table[1]
    assert table.shape == (2, test._dataset.item_num) and table.dtype == torch.bool
    assert trainer.evaluate(test, load_best_model=False) == new
    assert trainer._domain_table[1] is table  # built once, reused by every batch
    # the same scores, batch by batch, as the old per-batch compare
    trainer.model.eval()
    with torch.no_grad():
        for batch in test:
            ours = trainer._full_sort_batch_eval(batch)[1]
            old = _old_domain_mask_eval(trainer, batch)[1]
            assert torch.equal(ours, old)
    monkeypatch.setattr(CDSRTrainer, "_full_sort_batch_eval", _old_domain_mask_eval)
    assert trainer.evaluate(test, load_best_model=False) == new
    assert new["drama/n"] + new["other/n"] == new["n"] > 0


def test_speed_benchmark_runs_sasrec_variants_on_a_user_slice(tiny_path, monkeypatch, tmp_path):
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("speed", REPO / "benchmarks" / "speed.py")
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    monkeypatch.setenv("RECBOLE_CDSR_DATA", str(tiny_path))
    name, root = speed.slice_users("tiny", 7, tmp_path / "slice")
    import pandas as pd

    inter = pd.read_csv(root / name / f"{name}.inter", sep="\t")
    assert name == "tiny_u7" and inter["user_id:token"].nunique() == 7
    assert (root / name / f"{name}.item").is_file()
    out = tmp_path / "speed.md"
    small = tiny_config(tiny_path, train_batch_size=32)
    small.pop("data_path")
    speed.main(["--sasrec_variants", "--dataset", "ml100k_genre", "--max_users", "20",
                "--steps", "1", "--warmup", "0", "--eval", "1", "--config", json_dumps(small),
                "--output", str(out)])
    text = out.read_text()
    assert "`python benchmarks/speed.py --sasrec_variants --dataset ml100k_genre" in text
    for variant in speed.SASREC_VARIANTS:
        assert f"| ml100k_genre | SASRec ({variant}) | 32 x 10 |" in text
    assert "| ml100k_genre | SASRec (stock) | 32 x 10 |" in text and "| 1.00 |" in text
    assert "RecBole evaluate CPU s" in text


def json_dumps(value) -> str:
    import json

    return json.dumps(value)


def test_import_leaves_torch_and_recbole_layers_alone():
    import subprocess
    import sys

    code = (
        "import torch; from recbole.model import layers; f = torch.nn.Dropout.forward; "
        "g = layers.FeedForward.gelu; import recbole_cdsr.quick_start; "
        "assert torch.nn.Dropout.forward is f and layers.FeedForward.gelu is g"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ADARec with pads read by neither the poolings nor the controller (both switches False)
# cuts each batch to its longest row and encodes its rows in chunks of similar length
# (the batch is not regrouped: its loader stays RecBole's); that must equal the
# computation at the full padded width
ADAREC_KEYS = {
    "pool_include_padding": False, "controller_include_padding": False,
    "hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0, "n_intent_clusters": 4,
}


@pytest.mark.parametrize("controller_pads", [False, True])
def test_adarec_padding_free_training_is_exact_at_any_width(tiny_path, controller_pads):
    config, train, _ = build(
        tiny_path, "ADARec", **{**ADAREC_KEYS, "controller_include_padding": controller_pads}
    )
    assert not isinstance(train, LengthBucketTrainDataLoader)
    # tiny's users all have long histories: shorten 40 rows to 1..9 items (width 20)
    batch = train.collate_fn(list(range(40)))
    short = torch.randint(1, 10, (40,), generator=torch.Generator().manual_seed(0))
    short[0] = 9
    batch["item_length"] = short
    batch["item_id_list"] = batch["item_id_list"] * (torch.arange(WIDTH) < short.unsqueeze(1))
    torch.manual_seed(1)
    model = get_model("ADARec")(config, train._dataset).train()
    assert model.padding_free is not controller_pads
    model.padding_free = False  # left-padded to the full width 20, one encoder call
    assert model._inputs(batch, cut=model.padding_free)[0].shape[1] == WIDTH
    loss_full, grads_full = loss_and_grads(model, batch)
    # cut to the longest row (9) and encoded in chunks of 16 rows (of the 6 x 40 rows of
    # a step), even where that is not exact
    model.padding_free, model.encode_chunk_rows = True, 16
    assert model._inputs(batch, cut=model.padding_free)[0].shape[1] == 9
    loss_cut, grads_cut = loss_and_grads(model, batch)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    same = {  # tolerance relative to each gradient's scale (controller ~1e-5; key bias ~0)
        name: torch.allclose(g_full, g_cut, rtol=1e-4,
                             atol=1e-4 * float(g_full.abs().max()) + 1e-8)
        for name, g_full, g_cut in zip(names, grads_full, grads_cut)
    }
    if controller_pads:  # the official controller runs its GRU over the leading pads
        assert not same["experts.0.controller.gru.weight_hh_l0"]
        return
    assert torch.allclose(loss_full, loss_cut, rtol=1e-5, atol=1e-6)
    assert all(same.values()), [name for name, ok in same.items() if not ok]
