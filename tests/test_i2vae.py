"""I2VAE: spec section 8 behaviours on hand-made batches, the PSG on `tiny`, one epoch.

Sizes are distinct on purpose: B = 5 rows, S = 9 history slots, L = 7 (history_length),
H = 12 (hidden_size), k = 6 (latent_size), N = tiny's item count.
"""

import math

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction

from recbole_cdsr.config import Config
from recbole_cdsr.model.sequential_recommender import i2vae_psg
from recbole_cdsr.model.sequential_recommender.i2vae import (
    I2VAE,
    domain_slots,
    gaussian_kl,
    pool_weights,
    sigma,
)
from recbole_cdsr.quick_start import run_recbole_cdsr
from recbole_cdsr.utils import create_dataset, data_preparation

from conftest import tiny_config

B, S, L, H, K = 5, 9, 7, 12, 6
SMALL = dict(
    hidden_size=H,
    latent_size=K,
    history_length=L,
    scorer_hidden_size=4,
    transfer_n_heads=2,
    n_layers=1,
    psg_embedding_size=8,
    psg_epochs=2,
    psg_batch_size=4096,
)


def _build(tiny_path, **overrides):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.argv", ["pytest"])
        config_dict = tiny_config(tiny_path, **SMALL, **overrides)
        config = Config("I2VAE", "tiny", config_dict=config_dict)
        dataset = create_dataset(config)
        splits = data_preparation(config, dataset)
    return config, dataset, splits


@pytest.fixture(scope="module")
def built(tiny_path):
    return _build(tiny_path)


@pytest.fixture
def model(built):
    config, _, (train, _, _) = built
    torch.manual_seed(0)
    return I2VAE(config, train._dataset)


def _items(dataset, domain, n):
    return torch.nonzero(dataset.item_domain == domain).squeeze(1)[:n]


@pytest.fixture(scope="module")
def batch(built):
    """5 rows: X warm, Y warm, X cold (other domain only), Y with no history at all,
    X with an empty other domain. item_id_list is right-padded, as RecBole gives it."""
    _, dataset, _ = built
    x, y = _items(dataset, 0, 12), _items(dataset, 1, 12)
    seqs = torch.zeros(B, S, dtype=torch.long)
    seqs[0, :6] = torch.stack([x[0], y[0], x[1], y[1], x[2], y[2]])
    seqs[1, :5] = torch.stack([y[3], x[3], y[4], x[4], y[5]])
    seqs[2, :3] = y[6:9]  # X target, no X history
    seqs[4, :S] = x[:S]  # X target, no Y history, more than L X items
    lengths = torch.tensor([6, 5, 3, 1, S])  # empty history = one pad token (CDSRDataset)
    return Interaction(
        {
            "user_id": torch.tensor([1, 2, 3, 4, 5]),
            "item_id": torch.stack([x[10], y[10], x[11], y[11], x[9]]),
            "item_id_list": seqs,
            "item_length": lengths,
        }
    )


X_ROWS, Y_ROWS, COLD_X, WARM_X = [0, 2, 4], [1, 3], [2], [0, 4]


# --------------------------------------------------------------------- 1. shapes
def test_domain_slots_keeps_last_items_left_padded(built):
    _, dataset, _ = built
    x, y = _items(dataset, 0, 10), _items(dataset, 1, 3)
    seq = torch.tensor([[x[0], y[0], x[1], 0, 0, 0, 0, 0, 0], list(x[:9])])
    slots, count = domain_slots(seq, dataset.item_domain, 0, L)
    assert slots.tolist()[0] == [0] * 5 + [int(x[0]), int(x[1])]
    assert slots.tolist()[1] == [int(i) for i in x[2:9]]
    assert count.tolist() == [2, L]
    slots_y, count_y = domain_slots(seq, dataset.item_domain, 1, L)
    assert count_y.tolist() == [1, 0] and (slots_y[1] == 0).all()


def test_shapes_and_full_sort_masks(model, built, batch):
    _, dataset, _ = built
    model.psg_table[4] = 0  # all-PAD pseudo-sequences for row 3
    model.eval()
    with torch.no_grad():
        out = model(batch)
        assert out["user_x"].shape == (B, H) and out["user_y"].shape == (B, H)
        assert model.predict(batch).shape == (B,)
        scores = model.full_sort_predict(batch)
    n_items = dataset.item_num
    assert scores.shape == (B, n_items)
    target = dataset.item_domain[batch["item_id"]]
    outside = dataset.item_domain.unsqueeze(0) != target.unsqueeze(1)
    assert outside[:, 0].all()  # PAD is outside every domain
    assert torch.isneginf(scores[outside]).all()
    assert torch.isfinite(scores[~outside]).all()
    # full sort agrees with predict on the target
    on_target = scores[torch.arange(B), batch["item_id"]]
    assert torch.allclose(on_target, model.predict(batch), atol=1e-5)


# --------------------------------------------------------------------- 2. Gaussian helper
def test_gaussian_kl_identity_and_non_negative():
    torch.manual_seed(1)
    mu, logscale = torch.randn(B, K) * 3, torch.randn(B, K) * 2
    assert (gaussian_kl(mu, logscale, mu, logscale) == 0).all()
    other_mu, other_logscale = torch.randn(B, K), torch.randn(B, K)
    kl = gaussian_kl(mu, logscale, other_mu, other_logscale)
    assert kl.shape == (B,) and (kl >= 0).all() and (kl > 0).any()


def test_sigma_range_and_frozen_prior_scale(built, batch):
    model = _variant(built, prior_free_bits=0.0)  # official KL: the prior mean gets a gradient
    values = sigma(torch.linspace(-50, 50, 1001))
    assert values.min() >= 1.1052 - 1e-4 and values.max() <= 2.5136 + 1e-4
    assert math.isclose(float(sigma(torch.tensor(-1e4))), math.exp(0.1), rel_tol=1e-6)
    logscale = torch.tensor([0.5, 1.0, 3.0], requires_grad=True)
    sigma(logscale).sum().backward()
    assert (logscale.grad == 0).all()
    # one optimiser step: prior log-scale stays at 1.0, prior mean moves
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    before_mu = model.prior_mu.detach().clone()
    sum(model.calculate_loss(batch)).backward()
    optimizer.step()
    assert torch.equal(model.prior_logscale.detach(), torch.ones(2))
    assert not torch.equal(model.prior_mu.detach(), before_mu)


# --------------------------------------------------------------------- 3. loss terms
@pytest.mark.parametrize("faithful", [False, True])
def test_loss_terms_finite_non_negative_and_backward(model, batch, faithful):
    model.faithful_loss_broadcast = faithful
    model.train()
    terms = model.loss_terms(batch)
    for name in ("rec", "g_x", "g_y", "t_x", "t_y", "a_x", "a_y", "d_x", "d_y"):
        assert terms[name].shape == (B,)
        assert torch.isfinite(terms[name]).all() and (terms[name] >= 0).all(), name
    parts = model.combine(terms)
    assert len(parts) == len(I2VAE.loss_names)
    assert all(torch.isfinite(p) and p >= 0 for p in parts)
    sum(parts).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


# --------------------------------------------------------------------- 4. broadcast identity
def test_faithful_broadcast_matches_official_expression(model, batch):
    model.train()
    terms = model.loss_terms(batch)
    model.faithful_loss_broadcast = True
    _, prior, cross, denoise, disc = model.combine(terms)
    (ax, ay), (tx, ty) = model.aug_kl_weight, model.cross_kl_weight
    t = terms
    # the official code: scalar KLs times a [B] weight times a [B, 1] mask, then .mean()
    kl_x = t["g_x"].mean() + ax * t["w_x"] * t["a_x"].mean() + tx * t["t_x"].mean()
    kl_y = t["g_y"].mean() + ay * t["w_y"] * t["a_y"].mean() + ty * t["t_y"].mean()
    official_x = kl_x * t["mask_x"].unsqueeze(1)  # [B] * [B, 1] -> [B, B]
    official_y = kl_y * t["mask_y"].unsqueeze(1)
    official_kl = official_x.mean() + official_y.mean()
    assert torch.allclose(prior + cross + denoise, official_kl, atol=1e-6)
    den = (t["mask_x"] * t["d_x"] + t["mask_y"] * t["d_y"]) * (1 - t["tail"]).unsqueeze(1)
    assert torch.allclose(disc, model.discriminator_weight * den.mean(), atol=1e-6)
    # w(0) = 0.2, w(L) = exp(0.8) - 0.8 = 1.4255
    weights = model._length_weight(torch.tensor([0, L]))
    assert torch.allclose(weights, torch.tensor([0.2, 1.4255]), atol=1e-4)


# --------------------------------------------------------------------- 5. denoise gating
def test_denoise_gating(model, batch):
    model.train()
    terms = model.loss_terms(batch)
    model.faithful_loss_broadcast = True
    all_tailed = dict(terms, tail=torch.ones(B))
    assert model.combine(all_tailed)[4] == 0
    assert model.combine(dict(terms, tail=torch.zeros(B)))[4] > 0
    model.faithful_loss_broadcast = False
    tail = torch.tensor([1.0, 0, 1, 0, 0])
    base = model.combine(dict(terms, tail=tail))[4]
    bumped = dict(terms, tail=tail, d_x=terms["d_x"] + 5 * tail, d_y=terms["d_y"] + 5 * tail)
    assert torch.allclose(model.combine(bumped)[4], base)
    untailed = dict(terms, tail=tail, d_x=terms["d_x"] + 5 * (1 - tail))
    assert model.combine(untailed)[4] > base


# --------------------------------------------------------------------- 6. determinism
def test_eval_is_deterministic_train_is_not(model, batch):
    model.eval()
    with torch.no_grad():
        first, second = model.full_sort_predict(batch), model.full_sort_predict(batch)
    assert torch.equal(first, second)
    model.train()
    with torch.no_grad():
        first, second = model(batch)["user_x"], model(batch)["user_x"]
    assert not torch.allclose(first, second)


# --------------------------------------------------------------------- 7. PSG sensitivity
def _scores(model, batch):
    model.eval()
    with torch.no_grad():
        return model.predict(batch)


def _shuffle_psg(model, domain):
    table = model.psg_table.clone()
    table[:, domain] = table[:, domain].flip(0)  # other users' pseudo items
    model.psg_table.copy_(table)


@pytest.mark.parametrize("faithful", [True, False])
def test_psg_sensitivity(model, batch, faithful):
    model.faithful_aug_decode = faithful
    base = _scores(model, batch)
    _shuffle_psg(model, 0)
    after_x = _scores(model, batch)
    x_changed = not torch.allclose(after_x[X_ROWS], base[X_ROWS], atol=1e-6)
    assert x_changed is (not faithful)
    assert torch.allclose(after_x[Y_ROWS], base[Y_ROWS], atol=1e-6)
    _shuffle_psg(model, 1)
    after_y = _scores(model, batch)
    # (under pooling: last the change is small at init, ~2e-6: the pseudo items reach the
    # last slot's state through attention only; items and all pool them directly)
    assert not torch.equal(after_y[[1]], after_x[[1]])


# --------------------------------------------------------------------- 8. cold-start routing
def test_cold_start_rows_use_the_r_encoder(model, batch):
    base = _scores(model, batch)
    weight = model.transfer_attn_y.out_proj.weight
    with torch.no_grad():
        weight.add_(torch.randn_like(weight))
    after = _scores(model, batch)
    assert torch.allclose(after[COLD_X], base[COLD_X], atol=1e-6)
    assert not torch.allclose(after[WARM_X], base[WARM_X], atol=1e-6)


def test_bad_config_names_the_key(tiny_path, built):
    config, _, (train, _, _) = built
    config["trans_encoder"] = "gru"
    with pytest.raises(ValueError, match="trans_encoder.*attention"):
        I2VAE(config, train._dataset)
    config["trans_encoder"] = "attention"
    with pytest.raises(ValueError, match="psg_unseen_user"):
        _build(tiny_path, psg_unseen_user="noise")


# --------------------------------------------------------------------- learning switches
def _variant(built, **keys):
    config, _, (train, _, _) = built
    old = {k: config[k] for k in keys}
    try:
        for k, v in keys.items():
            config[k] = v
        torch.manual_seed(0)
        return I2VAE(config, train._dataset)
    finally:
        for k, v in old.items():
            config[k] = v


def test_item_init_std(built):
    official = _variant(built, item_init_std=1.0).item_embedding.weight
    small = _variant(built, item_init_std=0.05).item_embedding.weight
    assert float(official.std()) == pytest.approx(1.0, rel=0.05)
    assert float(small.std()) == pytest.approx(0.05, rel=0.05)


def test_latent_noise_scale(built):
    model = _variant(built, latent_noise_scale=0.5)
    model.train()
    mu, logscale = torch.randn(B, K), torch.randn(B, K)
    torch.manual_seed(3)
    eps = torch.randn(B, K)
    torch.manual_seed(3)
    torch.testing.assert_close(model._sample(mu, logscale), mu + 0.5 * sigma(logscale) * eps)
    model.noise_scale = 0.0
    assert torch.equal(model._sample(mu, logscale), mu)


def test_ce_loss_is_softmax_over_the_target_domain(built, batch):
    model = _variant(built, loss_type="CE")
    model.eval()  # deterministic forward (means, no dropout)
    with torch.no_grad():
        out = model(batch)
        rec = model.loss_terms(batch, out)["rec"]
        target = model.item_domain[batch["item_id"]]
        user = model._target_user(out, target)
        for row in range(B):
            items = torch.nonzero(model.item_domain == target[row]).squeeze(1)
            logits = model._score(user[row].expand(len(items), -1), items)
            pos = int((items == batch["item_id"][row]).nonzero())
            expected = torch.logsumexp(logits, 0) - logits[pos]
            assert float(rec[row]) == pytest.approx(float(expected), rel=1e-4)


def test_kl_warmup_scales_only_the_kl_terms(built, batch):
    model = _variant(built, kl_warmup_steps=4, latent_noise_scale=0.0)
    model.eval()  # deterministic terms but the sampled negative; steps count only in training
    torch.manual_seed(1)
    full = model.combine(model.loss_terms(batch))
    assert model.kl_scale() == 0.0
    torch.manual_seed(1)
    first = model.calculate_loss(batch)
    assert int(model.train_steps) == 0
    torch.testing.assert_close(first[0], full[0])
    torch.testing.assert_close(first[4], full[4])
    assert all(float(x) == 0.0 for x in first[1:4])
    model.train_steps += 2
    torch.manual_seed(1)
    half = model.calculate_loss(batch)
    for got, want in zip(half[1:4], full[1:4]):
        torch.testing.assert_close(got, 0.5 * want)
    model.train()
    model.calculate_loss(batch)
    assert int(model.train_steps) == 3
    model.train_steps += 10
    assert model.kl_scale() == 1.0


def test_pool_weights_all_items_last():
    seq = torch.tensor([[0, 0, 3, 4], [0, 0, 0, 0], [0, 0, 0, 5]])
    own = torch.ones(4, dtype=torch.bool)
    torch.testing.assert_close(pool_weights(seq, own, "all"), torch.full((3, 4), 0.25))
    items = pool_weights(seq, own, "items")
    torch.testing.assert_close(items[0], torch.tensor([0, 0, 0.5, 0.5]))
    torch.testing.assert_close(items[1], torch.full((4,), 0.25))  # no items: all slots
    last = pool_weights(seq, own, "last")
    torch.testing.assert_close(last[0], torch.tensor([0.0, 0, 0, 1]))
    torch.testing.assert_close(last[1], torch.full((4,), 0.25))
    # interleaved (s_1, p_1, s_2, p_2): the last own slot, or the pseudo items when none
    aug = torch.tensor([[0, 7, 3, 8], [0, 7, 0, 8]])
    own_aug = torch.tensor([True, False, True, False])
    torch.testing.assert_close(pool_weights(aug, own_aug, "last"),
                               torch.tensor([[0.0, 0, 1, 0], [0, 0.5, 0, 0.5]]))


def test_items_pooling_ignores_the_pad_row(built, batch):
    """pooling: items masks pad keys and pools items only: the pad embedding reaches no
    row that has items in both domains (rows 0 and 1), and does reach them under all."""
    for pooling, changes in (("items", False), ("all", True)):
        model = _variant(built, pooling=pooling).eval()
        with torch.no_grad():
            base = model(batch)["user_x"][:2].clone()
            model.item_embedding.weight[0] += 1.0
            after = model(batch)["user_x"][:2]
        assert (not torch.allclose(base, after, atol=1e-5)) == changes, pooling


def test_position_embedding_makes_order_matter(built, batch):
    def reversed_x(model):
        seq = batch["item_id_list"].clone()
        seq[0, :6] = seq[0, :6].flip(0)  # same items, other order
        flipped = Interaction({**{k: batch[k] for k in batch.interaction}, "item_id_list": seq})
        with torch.no_grad():
            return model(batch)["user_x"][0], model(flipped)["user_x"][0]

    a, b = reversed_x(_variant(built, pooling="items").eval())
    torch.testing.assert_close(a, b)  # set encoder, mean pooling: order-free
    a, b = reversed_x(_variant(built, pooling="items", position_embedding=True).eval())
    assert not torch.allclose(a, b, atol=1e-5)


def test_dot_scorer_and_user_skip(built, batch):
    plain = _variant(built, scorer="dot", user_skip=False).eval()
    skip = _variant(built, scorer="dot", user_skip=True).eval()  # same seed, same weights
    with torch.no_grad():
        out, out_skip = plain(batch), skip(batch)
        user = out["user_x"]
        items = batch["item_id"]
        expected = (user * plain.item_embedding(items)).sum(-1)
        torch.testing.assert_close(plain._score(user, items), expected)
        torch.testing.assert_close(plain._score_all(user)[torch.arange(B), items], expected)
        seq_x = plain._histories(batch)[0]
        own = torch.ones(L, dtype=torch.bool)
        pooled = plain.encoder_x(plain.item_embedding(seq_x), seq_x,
                                 pool_weights(seq_x, own, plain.pooling))[1]
        torch.testing.assert_close(out_skip["user_x"] - user, pooled)


def test_prior_free_bits_floor_each_dimension():
    mu, logscale = torch.randn(B, K) * 0.1, torch.zeros(B, K)
    zero = torch.zeros(B, K)
    per_dim = torch.stack([gaussian_kl(mu[:, i:i + 1], logscale[:, i:i + 1], zero[:, :1],
                                       zero[:, :1]) for i in range(K)], 1)
    torch.testing.assert_close(gaussian_kl(mu, logscale, zero, zero, free_bits=0.5),
                               (per_dim.clamp(min=0.5) - 0.5).sum(1))
    grad_mu = mu.clone().requires_grad_()
    gaussian_kl(grad_mu, logscale, zero, zero, free_bits=10.0).sum().backward()
    assert float(grad_mu.grad.abs().max()) == 0.0  # every dimension under the floor


@pytest.mark.parametrize("key,value", [("loss_type", "BPR"), ("item_init_std", -1.0),
                                       ("latent_noise_scale", "x"), ("kl_warmup_steps", 0.5),
                                       ("scorer", "cosine"), ("pooling", "max"),
                                       ("position_embedding", "yes"), ("user_skip", 1),
                                       ("prior_free_bits", -0.1)])
def test_bad_learning_switch_names_the_key(built, key, value):
    with pytest.raises(ValueError, match=key):
        _variant(built, **{key: value})


# --------------------------------------------------------------------- PSG
def test_psg_domains_never_pad_not_own_items_and_cached(tiny_path, built, monkeypatch):
    config, dataset, (train, valid, test) = built
    table = train._dataset.psg_table
    n_users = dataset.user_num
    assert table.shape == (n_users, 2, L)
    real = table[1:]
    assert (real > 0).all()
    assert (dataset.item_domain[real[:, 0]] == 0).all()
    assert (dataset.item_domain[real[:, 1]] == 1).all()
    # never one of the user's own training items
    feat = train._dataset.inter_feat
    own = torch.zeros(n_users, dataset.item_num, dtype=torch.bool)
    own[feat["user_id"], feat["item_id"]] = True
    assert not own.gather(1, table.view(n_users, -1)).any()
    # distinct users get distinct lists (personalised)
    assert len({tuple(r) for r in real.view(len(real), -1).tolist()}) > len(real) // 2

    # second call with the same settings reads the file and trains nothing
    config["psg_seed"] = 7
    splits = [train._dataset, valid._dataset, test._dataset]
    first, cached = i2vae_psg.pseudo_sequences(splits, config)
    assert not cached and i2vae_psg.cache_path(splits, config).is_file()

    def no_training(*args, **kwargs):
        raise AssertionError("LightGCN trained again despite the cache")

    monkeypatch.setattr(i2vae_psg, "_train_lightgcn", no_training)
    second, cached = i2vae_psg.pseudo_sequences(splits, config)
    assert cached and torch.equal(first, second)
    config["psg_seed"] = 8  # another key: not cached
    with pytest.raises(AssertionError, match="trained again"):
        i2vae_psg.pseudo_sequences(splits, config)
    config["psg_seed"] = 2020


def test_psg_inductive_users_differ_from_random(built):
    """Users absent from the graph: inductive lists follow their history."""
    config, dataset, (train, valid, test) = built
    user_emb = torch.randn(4, 3)
    item_emb = torch.randn(dataset.item_num, 3)
    candidates = np.flatnonzero(dataset.item_domain.numpy() == 0)
    own = np.array([1 * dataset.item_num + candidates[0]])
    picked = i2vae_psg._retrieve(user_emb, item_emb, candidates, own, dataset.item_num, L)
    assert picked.shape == (4, L) and (picked > 0).all()
    assert candidates[0] not in picked[1]
    scores = user_emb @ item_emb[candidates].T
    assert picked[0, 0] == candidates[int(scores[0].argmax())]


# --------------------------------------------------------------------- one epoch
def test_one_epoch_run(tiny_path, tmp_path):
    result = run_recbole_cdsr(
        "I2VAE",
        "tiny",
        config_dict=tiny_config(
            tiny_path,
            **SMALL,
            eval_candidates={"num": 20},
            user_inter_num_interval="[0,60]",  # the 29 shortest users: a fast epoch
        ),
    )
    assert len(result["train_loss"]) == 1 and math.isfinite(result["train_loss"][0])
    for part in ("all", "drama", "other"):
        for key in ("hit@10", "ndcg@10", "mrr@10"):
            assert 0.0 <= result["test"][part][key] <= 1.0


# --------------------------------------------------------------------- learning (issue 16)
LEARN_USERS, LEARN_EPOCHS, FIT_USERS, FIT_EPOCHS = 150, 3, 60, 5
LEARN_SIZE = {"latent_size": 32, "psg_epochs": 10, "psg_embedding_size": 32}


def _harness(tmp_path_factory, source_root, name: str, n_users: int):
    """(learning module, slice root) with the first ``n_users`` users as ``name``."""
    import learning

    root = tmp_path_factory.mktemp(f"i2vae_{name}")
    learning.make_user_slice(root, source_root, name, n_users)
    return learning, root


@pytest.fixture(scope="module")
def learned(tmp_path_factory, tiny_path):
    """Pop, SASRec and I2VAE (package defaults at the harness size: hidden 32, latent 32,
    batch 128) on the harness slice, LEARN_EPOCHS full epochs each."""
    learning, root = _harness(tmp_path_factory, tiny_path, "learn", LEARN_USERS)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.argv", ["pytest"])
        mp.chdir(root)
        return {
            "pop": learning.popularity(root, "learn")["mean/hit@10"],
            "sasrec": learning.learn("SASRec", root, "learn", LEARN_EPOCHS)["valid"][
                "mean/hit@10"],
            "i2vae": learning.learn("I2VAE", root, "learn", LEARN_EPOCHS, **LEARN_SIZE),
        }


def test_defaults_learn_above_popularity_and_near_sasrec(learned):
    """Valid HR@10 after LEARN_EPOCHS epochs: above Pop by 0.025 and within 0.03 of SASRec
    trained the same way (measured, docs/results/i2vae.md: Pop 0.0995, SASRec 0.144,
    I2VAE 0.138; the former defaults with the official MLP scorer and mean pooling gave
    0.116, which fails); the training loss decreases."""
    hit = learned["i2vae"]["valid"]["mean/hit@10"]
    assert hit > learned["pop"] + 0.025, learned
    assert hit > learned["sasrec"] - 0.03, learned
    losses = learned["i2vae"]["losses"]
    assert losses[-1] < 0.95 * losses[0], losses


def test_defaults_overfit_users_learn(tmp_path_factory, tiny_path):
    """HR@10 on the training targets of FIT_USERS users after FIT_EPOCHS epochs: at least
    1.5 x Pop's (measured: 0.217 vs Pop 0.100; the official scorer, pooling, noise and
    plain prior KL stay at Pop's level, docs/results/i2vae.md)."""
    learning, root = _harness(tmp_path_factory, tiny_path, "fit", FIT_USERS)
    overfit_hit = getattr(learning.overfit_hit, "__wrapped__", learning.overfit_hit)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.argv", ["pytest"])
        mp.chdir(root)
        pop = overfit_hit("Pop", root, "fit", 1)
        fit = overfit_hit("I2VAE", root, "fit", FIT_EPOCHS, **LEARN_SIZE)
    assert fit > 1.5 * pop, (fit, pop)

