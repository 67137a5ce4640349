"""ADARec: spec adarec.md section 8 behaviours on hand-made batches, plus one-epoch runs."""

import math
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from recbole_cdsr.config import Config
from recbole_cdsr.model.sequential_recommender import adarec
from recbole_cdsr.model.sequential_recommender.adarec import (
    ADARecTrainer,
    alpha_bar_schedule,
    crop_view,
    exploration_loss,
    left_pad,
    mask_view,
    nce_loss,
    reorder_view,
)
from recbole_cdsr.quick_start import run_recbole_cdsr
from recbole_cdsr.utils import create_dataset, data_preparation, get_model

from conftest import N_USERS, tiny_config

B, L, H, K = 5, 7, 12, 4  # distinct sizes

# The learning slice: ml100k_genre's first 300 users (conftest.learn_slice), SMALL size
# (tests/learning.py), 32 intent clusters, one row per user (official `last` sampling):
# 3 optimiser steps per epoch at batch 128.
ADA_LEARN = dict(n_intent_clusters=32, per_expert_early_stop=False)
ADA_EPOCHS = 60  # = 180 steps
# The official loss recipe (BCE, raw dot-product contrastive logits) for the failing case.
ADA_OFFICIAL = dict(loss_type="BCE", cl_similarity="dot")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny tensors: intra-op threads only add overhead (and stall on a loaded machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def adarec_config(tiny_path, **overrides):
    base = dict(
        MAX_ITEM_LIST_LENGTH=L, hidden_size=H, inner_size=2 * H, n_heads=2,
        n_intent_clusters=K, train_batch_size=B,
    )
    return tiny_config(tiny_path, **{**base, **overrides})


def build(tiny_path, **overrides):
    config = Config("ADARec", "tiny", config_dict=adarec_config(tiny_path, **overrides))
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    torch.manual_seed(0)
    model = get_model("ADARec")(config, train._dataset)
    return config, dataset, (train, valid, test), model


@pytest.fixture(scope="module")
def built(tiny_path):
    return build(tiny_path)


@contextmanager
def overridden(config, **overrides):
    """Temporarily sets config keys (the module's dataset is built once)."""
    saved = {key: config[key] for key in overrides}
    for key, value in overrides.items():
        config[key] = value
    try:
        yield config
    finally:
        for key, value in saved.items():
            config[key] = value


def fresh_model(built, **overrides):
    config, _, (train, _, _), _ = built
    with overridden(config, **overrides):
        torch.manual_seed(0)
        return get_model("ADARec")(config, train._dataset)


@pytest.fixture
def model(built):
    model = built[3]
    model.train()
    for name in adarec.EXPERT_NAMES:
        model.set_expert_active(name, True)
    model.zero_grad(set_to_none=True)
    return model


def hand_batch(model, seed=0):
    """Right-padded histories of lengths 1..L (no repeats) and targets, RecBole layout."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([1, 3, L, 4, 6])
    seq = torch.zeros(B, L, dtype=torch.long)
    target = torch.empty(B, dtype=torch.long)
    for b, n in enumerate(lengths.tolist()):
        items = torch.randperm(model.n_items - 1, generator=gen)[: n + 1] + 1
        seq[b, :n] = items[:n]
        target[b] = items[n]
    return {model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lengths, model.POS_ITEM_ID: target}


def zero_dropout(module):
    for m in module.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    for m in module.modules():  # RecBole attention keeps its dropout as a module too
        if hasattr(m, "attn_dropout"):
            m.attn_dropout.p = 0.0


# ---------------------------------------------------------------- 1. noise schedule
def test_noise_schedule_matches_official_levels(model):
    alpha_bar = alpha_bar_schedule(50, 1e-4, 0.02)
    noise = (1 - alpha_bar[[3, 4, 8, 9]]).sqrt()
    assert noise.tolist() == pytest.approx([0.05324, 0.06748, 0.12417, 0.13826], abs=1e-5)
    assert model.expert("A").noise_std.tolist() == pytest.approx([0.05324, 0.06748], abs=1e-5)
    assert model.expert("B").signal_scale.tolist() == pytest.approx([0.99226, 0.99040], abs=1e-5)


def test_diffuse_without_noise_is_scaled_input_and_noise_variance_matches(model):
    expert = model.expert("B")
    seq_emb = torch.randn(B, L, H)
    mix = torch.softmax(torch.randn(B, 2), dim=-1)
    saved = expert.noise_std.clone()
    expert.noise_std.zero_()
    try:
        scale = (mix * expert.signal_scale).sum(-1)
        assert torch.allclose(expert.diffuse(seq_emb, mix), scale.view(-1, 1, 1) * seq_emb)
    finally:
        expert.noise_std.copy_(saved)
    torch.manual_seed(1)
    fixed = torch.tensor([[0.3, 0.7]]).expand(2000, 2)
    noised = expert.diffuse(torch.zeros(2000, 8, H), fixed)
    expected = 0.3**2 * saved[0] ** 2 + 0.7**2 * saved[1] ** 2
    assert noised.var().item() == pytest.approx(expected.item(), rel=0.03)


# ---------------------------------------------------------------- 2. train/eval behaviour
def test_eval_scores_are_deterministic_average_of_experts(model):
    batch = hand_batch(model)
    model.eval()
    with torch.no_grad():
        first, second = model.full_sort_predict(batch), model.full_sort_predict(batch)
        x = left_pad(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN], L)
        manual = []
        for name in ("A", "B"):
            expert = model.expert(name)
            last = expert.encode(expert.embed(x), x)[:, -1]
            manual.append(last @ expert.item_embedding.weight.T)
        one = {**batch, model.ITEM_ID: torch.arange(B) + 1}
        predicted = model.predict(one)
    assert first.shape == (B, model.n_items)
    assert torch.equal(first, second)
    assert torch.allclose(first, (manual[0] + manual[1]) / 2, atol=1e-6)
    assert torch.allclose(predicted, first[torch.arange(B), torch.arange(B) + 1], atol=1e-6)


def test_train_forward_noised_view_equals_encoder_of_scaled_input(built):
    model = fresh_model(built)
    zero_dropout(model)
    batch = hand_batch(model)
    x, seq_len = model._inputs(batch)
    expert = model.expert("A")
    model.eval()
    with torch.no_grad():
        eval_raw = expert(x, seq_len)[0]
    model.train()
    raw, ada, mix = expert(x, seq_len)
    assert not torch.allclose(raw, ada)
    assert torch.allclose(raw, eval_raw, atol=1e-6)
    expert.noise_std.zero_()
    raw, ada, mix = expert(x, seq_len)
    scale = (mix * expert.signal_scale).sum(-1).view(-1, 1, 1)
    expected = expert.encode(scale * expert.embed(x), x)
    assert torch.allclose(ada, expected, atol=1e-5)


def test_left_pad_puts_last_item_at_last_position():
    seq = torch.tensor([[3, 4, 0, 0], [5, 6, 7, 8], [9, 0, 0, 0]])
    out = left_pad(seq, torch.tensor([2, 4, 1]), 6)
    assert out.tolist() == [[0, 0, 0, 0, 3, 4], [0, 0, 5, 6, 7, 8], [0, 0, 0, 0, 0, 9]]


# ---------------------------------------------------------------- 3. controller
def test_controller_is_stochastic_clamps_length_and_takes_no_embedding_gradient(model):
    expert = model.expert("A")
    batch = hand_batch(model)
    x, _ = model._inputs(batch)
    raw, ada, mix = expert(x, torch.tensor([1, 3, 600, 513, 10_000]))
    assert mix.shape == (B, 2)
    assert torch.allclose(mix.sum(-1), torch.ones(B))
    exploration_loss(mix).backward()
    assert expert.item_embedding.weight.grad is None
    assert expert.controller.fc.weight.grad.abs().sum() > 0


def test_controller_gets_gradient_from_noised_rec_loss(model):
    expert = model.expert("B")
    batch = hand_batch(model)
    x, seq_len = model._inputs(batch)
    pos = model._targets(x, batch[model.POS_ITEM_ID])
    _, ada, _ = expert(x, seq_len)
    neg = model._negatives(x, pos)
    (0.5 * model.rec_loss(ada, pos, neg, expert.item_embedding.weight)).backward()
    assert expert.controller.gru.weight_ih_l0.grad.abs().sum() > 0
    assert expert.controller.fc.weight.grad.abs().sum() > 0


def test_exploration_loss_is_minimal_at_uniform_mixture():
    grid = torch.linspace(0.01, 0.99, 99)
    per_row = torch.stack([exploration_loss(torch.tensor([[p, 1 - p]])) for p in grid.tolist()])
    assert grid[per_row.argmin()].item() == pytest.approx(0.5, abs=1e-6)
    assert per_row.min().item() == pytest.approx(-math.log(2), abs=1e-6)
    batch = exploration_loss(torch.stack([grid, 1 - grid], dim=1))
    assert batch.item() == pytest.approx(per_row.mean().item(), abs=1e-6)


# ---------------------------------------------------------------- 4. expert independence
def test_expert_losses_are_independent(model):
    batch = hand_batch(model)
    x, seq_len = model._inputs(batch)
    pos = model._targets(x, batch[model.POS_ITEM_ID])
    neg = model._negatives(x, pos)
    views = adarec.random_views(torch.cat([x, x]), 0.2, 0.7, 0.2)
    sum(model._expert_losses("A", x, seq_len, pos, neg, views, (views != 0).sum(1))).backward()
    grads_a = [p.grad for p in model.expert("A").parameters()]
    assert all(g is None for g in (p.grad for p in model.expert("B").parameters()))
    assert sum(g.abs().sum() for g in grads_a if g is not None) > 0
    table_a, table_b = (model.expert(n).item_embedding.weight for n in ("A", "B"))
    assert table_a.data_ptr() != table_b.data_ptr()


def test_frozen_expert_is_bit_identical_after_a_step(built):
    train, model = built[2][0], fresh_model(built)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = next(iter(train))
    for _ in range(2):  # a first step fills Adam's moments for both experts
        optimizer.zero_grad()
        sum(model.calculate_loss(batch)).backward()
        optimizer.step()
    model.set_expert_active("A", False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer.zero_grad()
    sum(model.calculate_loss(batch)).backward()
    optimizer.step()
    after = model.state_dict()
    a_keys = [k for k in before if k.startswith("experts.0.")]
    b_keys = [k for k in before if k.startswith("experts.1.")]
    assert all(torch.equal(before[k], after[k]) for k in a_keys)
    assert any(not torch.equal(before[k], after[k]) for k in b_keys)


# ---------------------------------------------------------------- 5. contrastive losses
def test_nce_matches_hand_computation_on_two_rows():
    a = torch.tensor([[1.0, 0.0], [0.5, 1.0]])
    b = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    dot = lambda u, v: float(u @ v)  # noqa: E731
    inf = float("-inf")
    logits = torch.tensor([
        [dot(a[0], b[0]), dot(a[0], b[1]), inf, dot(a[0], a[1])],
        [dot(a[1], b[0]), dot(a[1], b[1]), dot(a[1], a[0]), inf],
        [inf, dot(b[0], b[1]), dot(b[0], a[0]), dot(b[0], a[1])],
        [dot(b[1], b[0]), inf, dot(b[1], a[0]), dot(b[1], a[1])],
    ]) / 0.5
    expected = F.cross_entropy(logits, torch.arange(4))
    assert nce_loss(a, b, 0.5).item() == pytest.approx(expected.item(), abs=1e-6)


def test_nce_masking_by_intent_ids():
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(B, H, generator=gen), torch.randn(B, H, generator=gen)
    distinct = torch.arange(B)
    assert torch.allclose(nce_loss(a, b, 1.0, distinct), nce_loss(a, b, 1.0))
    same = torch.zeros(B, dtype=torch.long)
    loss = nce_loss(a, b, 1.0, same)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(0.0, abs=1e-6)


def test_instance_cl_flattens_and_intent_cl_pools(model, monkeypatch):
    shapes = []
    original = adarec.nce_loss

    def spy(a, b, temperature, intent_ids=None, similarity="dot"):
        shapes.append((tuple(a.shape), intent_ids is not None, similarity))
        return original(a, b, temperature, intent_ids, similarity=similarity)

    monkeypatch.setattr(adarec, "nce_loss", spy)
    model.set_expert_active("B", False)
    model.calculate_loss(hand_batch(model))
    sim = model.cl_similarity
    assert shapes == [((B, L * H), False, sim), ((B, H), True, sim), ((B, H), True, sim)]


def test_cosine_nce_is_dot_nce_of_normalised_rows_and_stays_small():
    torch.manual_seed(0)
    a, b = 30 * torch.randn(6, 40), 30 * torch.randn(6, 40)
    cos = nce_loss(a, b, 0.5, similarity="cos")
    dot = nce_loss(F.normalize(a, dim=1), F.normalize(b, dim=1), 0.5)
    assert torch.allclose(cos, dot)
    # logits within [-2, 2]: the loss is near log(2B - 1), unlike the raw dot products'
    assert abs(cos.item() - math.log(11)) < 2.0
    assert nce_loss(a, b, 0.5).item() > 100


# ---------------------------------------------------------------- 6. clustering
def test_cluster_step_normalises_assigns_and_only_updates_centres(model):
    expert = model.expert("A")
    expert.cluster_centers.data.mul_(3.0)
    batch = hand_batch(model)
    x, seq_len = model._inputs(batch)
    raw = expert(x, seq_len)[0]
    loss, assign = model._cluster_step(expert, raw, x)
    centers = expert.cluster_centers
    assert torch.allclose(centers.norm(dim=1), torch.ones(K), atol=1e-6)
    assert not model.pool_include_padding  # default: the mean over real positions only
    real = (x != 0).unsqueeze(-1).float()
    query = F.normalize((raw.detach() * real).sum(1) / real.sum(1), dim=1)
    dist = torch.cdist(query, centers.detach()) ** 2
    assert torch.equal(assign, dist.argmin(1))
    center_dist = torch.cdist(centers.detach(), centers.detach()) ** 2
    expected = model.cluster_weight * (dist.mean() - center_dist.mean())
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    loss.backward()
    assert centers.grad.abs().sum() > 0
    assert all(p.grad is None for p in expert.encoder.parameters())
    assert expert.item_embedding.weight.grad is None


def test_centres_are_unit_norm_after_a_training_step(model):
    for name in ("A", "B"):
        model.expert(name).cluster_centers.data.mul_(2.0)
    model.calculate_loss(hand_batch(model))
    for name in ("A", "B"):
        norms = model.expert(name).cluster_centers.norm(dim=1)
        assert torch.allclose(norms, torch.ones(K), atol=1e-6)


def test_kmeans_init_sets_centres_from_train_queries(built):
    config, train, model = built[0], built[2][0], fresh_model(built)
    trainer = ADARecTrainer(config, model)
    before = model.expert("A").cluster_centers.detach().clone()
    trainer.init_cluster_centers(train)
    centers = model.expert("A").cluster_centers.detach()
    assert not torch.allclose(before, centers)
    assert torch.isfinite(centers).all()
    assert torch.allclose(centers.norm(dim=1), torch.ones(K), atol=1e-5)


# ---------------------------------------------------------------- 7. augmentations
def _left_padded(lengths, width, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.zeros(len(lengths), width, dtype=torch.long)
    for b, n in enumerate(lengths):
        if n:
            x[b, width - n :] = torch.randperm(100, generator=gen)[:n] + 1
    return x, torch.tensor(lengths)


@pytest.mark.parametrize("seed", range(5))
def test_crop_view(seed):
    torch.manual_seed(seed)
    lengths = [1, 2, 4, 5, 9, 10, 13]
    x, n = _left_padded(lengths, 13, seed)
    out = crop_view(x, n, 0.2)
    for b, length in enumerate(lengths):
        kept = out[b][out[b] > 0]
        m = max(1, int(0.2 * length))
        assert len(kept) == m and (out[b, : 13 - m] == 0).all()
        row = x[b][x[b] > 0].tolist()
        start = row.index(kept[0].item())
        assert row[start : start + m] == kept.tolist()
        if int(0.2 * length) >= 1:
            assert start + m <= length - 1  # never covers the last item


@pytest.mark.parametrize("seed", range(5))
def test_mask_view(seed):
    torch.manual_seed(seed)
    lengths = [1, 2, 4, 7, 11]
    x, n = _left_padded(lengths, 11, seed)
    out = mask_view(x, n, 0.7)
    for b, length in enumerate(lengths):
        real = slice(11 - length, 11)
        assert int((out[b, real] == 0).sum()) == int(0.7 * length)
        assert (out[b, : 11 - length] == 0).all()
        unchanged = out[b, real] != 0
        assert torch.equal(out[b, real][unchanged], x[b, real][unchanged])


@pytest.mark.parametrize("seed", range(5))
def test_reorder_view(seed):
    torch.manual_seed(seed)
    lengths = [1, 3, 5, 10, 12]
    x, n = _left_padded(lengths, 12, seed)
    out = reorder_view(x, n, 0.2)
    for b, length in enumerate(lengths):
        assert sorted(out[b].tolist()) == sorted(x[b].tolist())
        assert out[b, -1] == x[b, -1]
        assert (out[b, : 12 - length] == 0).all()
        moved = (out[b] != x[b]).nonzero().flatten()
        if len(moved):
            assert moved.max() - moved.min() + 1 <= int(0.2 * length)


def test_shuffle_of_long_window_changes_order():
    torch.manual_seed(0)
    x, n = _left_padded([40] * 50, 40)
    out = reorder_view(x, n, 0.2)
    assert (out != x).any()


# ---------------------------------------------------------------- 8. data and targets
def _raw_sequences(tiny_path, dataset):
    inter = pd.read_csv(tiny_path / "tiny" / "tiny.inter", sep="\t", dtype=str)
    inter["t"] = inter["timestamp:float"].astype(float)
    inter = inter.sort_values(["user_id:token", "t"], kind="stable")
    seqs = {}
    for user, group in inter.groupby("user_id:token"):
        uid = dataset.token2id(dataset.uid_field, user)
        items = group["item_id:token"]
        seqs[int(uid)] = [int(dataset.token2id(dataset.iid_field, i)) for i in items]
    return seqs


def test_last_mode_keeps_one_row_per_user_with_shifted_targets(tiny_path, built):
    _, dataset, (train, valid, test), model = built
    seqs = _raw_sequences(tiny_path, dataset)
    rows = train._dataset.inter_feat
    assert len(rows) == N_USERS
    x, _ = model._inputs(rows)
    pos = model._targets(x, rows[model.POS_ITEM_ID])
    for b, uid in enumerate(rows["user_id"].tolist()):
        s = seqs[uid]
        real = x[b] > 0
        assert x[b][real].tolist() == s[:-3][-L:]
        assert pos[b][real].tolist() == s[1:-2][-L:]  # s_2..s_{n-2}
        assert (pos[b][~real] == 0).all()
    for split, offset in ((valid, 2), (test, 1)):
        feat = split._dataset.inter_feat
        for uid, target, hist, n in zip(
            feat["user_id"].tolist(),
            feat["item_id"].tolist(),
            feat["item_id_list"],
            feat["item_length"],
        ):
            assert target == seqs[uid][-offset]
            assert hist[:n].tolist() == seqs[uid][:-offset][-L:]


def test_short_histories_and_internal_length(tiny_path):
    _, _, (train, valid, test), model = build(tiny_path, MAX_ITEM_LIST_LENGTH=5, internal_len=8)
    for loader in (train, valid, test):
        feat = loader._dataset.inter_feat
        assert int(feat["item_length"].max()) <= 5
        x, _ = model._inputs(feat)
        assert x.shape[1] == 8 and int((x > 0).sum(1).max()) <= 5
    assert model.expert("A").position_embedding.num_embeddings == 8


def test_bce_ignores_pads_and_matches_hand_computation(model, monkeypatch):
    monkeypatch.setattr(model, "loss_type", "BCE")
    hidden = torch.randn(2, 3, H)
    item_emb = torch.randn(model.n_items, H)
    pos = torch.tensor([[0, 4, 5], [0, 0, 7]])
    neg = torch.tensor([[9, 10, 11], [12, 13, 14]])
    terms = []
    for b, j in ((0, 1), (0, 2), (1, 2)):
        p = torch.sigmoid(hidden[b, j] @ item_emb[pos[b, j]])
        q = torch.sigmoid(hidden[b, j] @ item_emb[neg[b, j]])
        terms.append(-torch.log(p + 1e-24) - torch.log(1 - q + 1e-24))
    expected = torch.stack(terms).mean()
    loss = model.rec_loss(hidden, pos, neg, item_emb)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)


def test_ce_is_full_softmax_over_real_positions_only(model):
    assert model.loss_type == "CE"  # the measured default (docs/results/adarec.md)
    hidden = torch.randn(2, 3, H)
    item_emb = torch.randn(model.n_items, H)
    pos = torch.tensor([[0, 4, 5], [0, 0, 7]])
    rows = torch.stack([hidden[0, 1], hidden[0, 2], hidden[1, 2]])
    expected = F.cross_entropy(rows @ item_emb.T, torch.tensor([4, 5, 7]))
    loss = model.rec_loss(hidden, pos, None, item_emb)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)


def test_negatives_avoid_row_items(model):
    torch.manual_seed(0)
    batch = hand_batch(model)
    x, _ = model._inputs(batch)
    pos = model._targets(x, batch[model.POS_ITEM_ID])
    neg = model._negatives(x, pos)
    assert ((neg >= 1) & (neg < model.n_items)).all()
    banned = torch.cat([x, pos[:, -1:]], dim=1)
    clashes = (neg.unsqueeze(-1) == banned.unsqueeze(1)).any(-1).float().mean()
    assert clashes < 0.01


# ---------------------------------------------------------------- trainer and config
def test_per_expert_early_stopping_freezes_and_keeps_best_snapshots(built):
    config, (train, valid), model = built[0], built[2][:2], fresh_model(built)
    with overridden(config, epochs=4, stopping_step=1):
        trainer = ADARecTrainer(config, model)
    scripted = {"A": [0.1, 0.05, 0.2, 0.3], "B": [0.1, 0.2, 0.3, 0.4]}
    calls, snapshots = {"A": 0, "B": 0, None: 0}, {}

    def fake_valid(valid_data, show_progress=False, expert=None):
        if expert is None:
            calls[None] += 1
            return 0.5, {"ndcg@10": 0.5}
        if calls[expert] == 0 or expert == "B":
            snapshots[expert] = model.expert_state(expert)
        score = scripted[expert][calls[expert]]
        calls[expert] += 1
        return score, {"ndcg@10": score}

    trainer._valid_epoch = fake_valid
    score, result = trainer.fit(train, valid, verbose=False, saved=True)
    assert calls == {"A": 2, "B": 4, None: 1}  # A frozen after one miss; fused once at the end
    assert score == 0.5 and len(trainer.train_loss_dict) == 4
    saved = torch.load(trainer.saved_model_file, weights_only=False)["state_dict"]
    for name in ("A", "B"):
        for key, value in snapshots[name].items():
            assert torch.equal(saved[key], value) and torch.equal(model.state_dict()[key], value)
    assert model.active_experts() == ["A", "B"]


@pytest.mark.parametrize(
    "key, value",
    [
        ("loss_type", "bpr"),
        ("train_sampling", "random"),
        ("cluster_init", "zeros"),
        ("eval_expert", "C"),
    ],
)
def test_bad_choices_raise(built, key, value):
    with pytest.raises(ValueError, match=f"{key} must be one of"):
        fresh_model(built, **{key: value})


def test_bad_levels_and_internal_len_raise(built):
    with pytest.raises(ValueError, match="expert_levels"):
        fresh_model(built, expert_levels=[[4, 60], [9, 10]])
    with pytest.raises(ValueError, match="internal_len"):
        fresh_model(built, internal_len=3)


# ---------------------------------------------------------------- one-epoch runs
def _check_run(result):
    assert result["time"]["epochs"] == 1
    for part in ("all", "drama", "other"):
        for key, value in result["test"][part].items():
            if key != "n":
                assert 0.0 <= value <= 1.0 and np.isfinite(value)


def test_one_epoch_run_official_mode(tiny_path):
    config = adarec_config(tiny_path, train_batch_size=16, **ADA_OFFICIAL)
    result = run_recbole_cdsr("ADARec", "tiny", config_dict=config)
    _check_run(result)
    assert result["test"]["all"]["n"] == N_USERS


def test_one_epoch_run_prefix_ce_variant(tiny_path):
    result = run_recbole_cdsr(
        "ADARec", "tiny",
        config_dict=adarec_config(
            tiny_path, train_batch_size=256, train_sampling="all_prefix", loss_type="CE",
            per_expert_early_stop=False, cluster_init="normal", share_cl_forward=True,
            pool_include_padding=True, controller_include_padding=True, mask_history_in_eval=True,
        ),
    )
    _check_run(result)


def test_one_epoch_losses_are_finite(built):
    _, _, (train, _, _), model = built
    losses = model.calculate_loss(next(iter(train)))
    assert len(losses) == len(model.loss_names)
    assert all(torch.isfinite(part) for part in losses)


# ----------------------------------------------------------------------------- learning


@pytest.fixture(scope="module")
def sasrec_at_equal_steps(learn_slice):
    from learning import learn

    root, name = learn_slice
    return learn("SASRec", root, name, epochs=2, steps_per_epoch=3 * ADA_EPOCHS // 2)["valid"]


def _adarec_learns(learn_slice, learn_pop, sasrec_at_equal_steps, **overrides):
    from learning import METRIC, learn

    root, name = learn_slice
    result = learn("ADARec", root, name, epochs=ADA_EPOCHS, **{**ADA_LEARN, **overrides})
    hit = result["valid"][METRIC]
    pop = learn_pop[METRIC]
    sasrec = sasrec_at_equal_steps[METRIC]
    losses = result["losses"]
    assert losses[-1] < 0.9 * losses[0], losses
    assert hit > pop + 0.03, (hit, pop)
    assert hit > sasrec - 0.03, (hit, sasrec)  # stated margin: 0.03 HR@10 at equal steps


def test_adarec_learns_like_sasrec_at_equal_steps(learn_slice, learn_pop,
                                                   sasrec_at_equal_steps):
    _adarec_learns(learn_slice, learn_pop, sasrec_at_equal_steps)


@pytest.mark.slow
def test_adarec_official_loss_recipe_does_not_learn(learn_slice, learn_pop,
                                                    sasrec_at_equal_steps):
    # The same check fails with the official recipe: the contrastive terms on raw dot
    # products (~150 at initialisation) swamp the recommendation loss.
    with pytest.raises(AssertionError):
        _adarec_learns(learn_slice, learn_pop, sasrec_at_equal_steps, **ADA_OFFICIAL)


def test_adarec_overfits_100_users(tiny_path):
    # Measured: 0.93 (official loss recipe: 0.23; Pop 0.13; SASRec after 8 epochs 0.46).
    from learning import make_user_slice, overfit_hit

    make_user_slice(tiny_path, tiny_path, "ml100k_first100", 100)
    train_hit = overfit_hit(
        "ADARec", tiny_path, "ml100k_first100", epochs=100, hidden_dropout_prob=0.0,
        attn_dropout_prob=0.0, train_batch_size=100, **ADA_LEARN,
    )
    pop_hit = overfit_hit("Pop", tiny_path, "ml100k_first100", epochs=1)
    assert train_hit > 0.6 and train_hit > 4 * pop_hit, (train_hit, pop_hit)
