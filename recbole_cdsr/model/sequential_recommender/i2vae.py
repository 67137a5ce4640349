"""I2VAE: interest information augmentation with variational regularizers for CDSR.

Paper: X. Ning, W. Xu, X. Liu, M. Ha, Q. Ma, Y. Li, L. Chen, Y. Zhang. "Interest
Information Augmentation with Variational Regularizers for Cross-Domain Sequential
Recommendation" (i²VAE). In UAI 2025 (PMLR 286). arXiv:2405.20710
Code:  github.com/YennNing/I2VAE @ b665961 (model.py, train_our.py, callback.py) and its
earlier release github.com/WujiangXu/IM-VAE @ a9ec2fa. Spec: docs specs i2vae.md.

Differences from the official code (each ``faithful_*``/``psg_*`` switch restores it):

1. the augmented X latent is decoded (``p_X(z^X_a)``); the official code decodes ``z^X``
   again, so pseudo items never reach X scores (``faithful_aug_decode``);
2. the length weight, the target-domain masks and the long-tail gate act per row; the
   official code's ``[B] * [B, 1]`` broadcasting turns them into batch averages
   (``faithful_loss_broadcast``);
3. histories are encoded as sets (no causal mask), since the official lists are in raw
   file order, not time order (``sequence_order: causal`` restores the causal mask);
4. pseudo-sequences come from RecBole's LightGCN trained on our training split, with an
   inductive embedding for users outside the graph and no edges to a user's own
   valid/test targets (i2vae_psg.py; ``psg_unseen_user``, ``psg_use_eval_targets``);
5. ``tail_len`` is computed with the official rule on the training split, not on the
   test file; one negative per training row is drawn from the target domain by the
   model; selection on a validation split (RecBole's trainer), not on test;
6. BCE on logits instead of BCE on sigmoid outputs (same value, stable); PyTorch default
   initialisation everywhere (the official code re-initialises only q_X and p_X); a
   single item table of RecBole's vocabulary (the official one is twice the item count).
7. item embeddings start at N(0, 0.05^2), not N(0, 1) (``item_init_std: 1.0`` restores
   it): at lr 8e-4 the official table moves ~0.4% per epoch and a 3-epoch run stays below
   a popularity ranker (docs/results/i2vae.md).
8. learning defaults chosen by measured validation accuracy (issue 16; each switch's
   official value restores the released code): ``scorer: dot`` (official ``mlp``, whose
   saturated ReLUs rank every user alike), ``pooling: items`` (official ``all``: mean over
   every slot, the learned pad token included, no key mask; ``last``: the most recent
   item), ``user_skip: True`` (a residual from the pooled encoder state past the latents,
   not in the paper), ``prior_free_bits: 0.5``, ``latent_noise_scale: 0`` (the official
   sigma map has a floor of 1.105) and ``loss_type: CE`` (softmax over the target domain;
   official BCE with one sampled negative). ``kl_warmup_steps`` (linear KL ramp) is off.
   ``pooling: all`` measured best on cloth_sport, whose lists are in file order, and is
   set by the I2VAE experiment yamls.

Kept as in the official code (spec section 6): the sigma-map with its frozen prior
scale, the positive-only discriminator, the learned pad token (no ``padding_idx``), and
the transfer attention whose keys and values come from different domains.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_cdsr.data.dataset import CDSRDataset
from recbole_cdsr.model.sequential_recommender.i2vae_psg import check_psg_config, pseudo_sequences
from recbole_cdsr.utils import check_choice

logger = logging.getLogger(__name__)

TRANS_ENCODERS = ("attention", "mlp")
SEQUENCE_ORDERS = ("set", "causal")
LOSS_TYPES = ("BCE", "CE")
SCORERS = ("mlp", "dot")
POOLINGS = ("all", "items", "last")
PRIOR_LOGSCALE = 1.0  # official initial prior log-scale; frozen by the clamp in sigma()


def _pair(config, key: str) -> tuple[float, float]:
    value = config[key]
    if isinstance(value, (int, float)):
        return float(value), float(value)
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(
            f"I2VAE: {key} must be a number or a [X, Y] pair of numbers, got {value!r}"
        )
    return float(value[0]), float(value[1])


def sigma(logscale: torch.Tensor) -> torch.Tensor:
    """Official std map g(l) = exp(0.1 + 0.9 softplus(min(l, 0.4))), in [1.1052, 2.5136]."""
    return torch.exp(0.1 + 0.9 * F.softplus(logscale.clamp(max=0.4)))


def gaussian_kl(mu1, logscale1, mu2, logscale2, free_bits: float = 0.0) -> torch.Tensor:
    """KL(N(mu1, g(l1)^2) || N(mu2, g(l2)^2)) summed over the last dim: ``[B]``.

    ``free_bits`` > 0 counts only each dimension's KL above that many nats per row,
    max(KL_d, f) - f (free bits, Kingma et al. 2016, per row here; the constant -f keeps
    the logged loss readable): a dimension under the floor gets no gradient.
    """
    std1, std2 = sigma(logscale1), sigma(logscale2)
    var1, var2 = std1 * std1, std2 * std2
    kl = torch.log(std2 / std1) + (var1 + (mu1 - mu2) ** 2) / (2 * var2) - 0.5
    if free_bits > 0:
        kl = kl.clamp(min=free_bits) - free_bits
    return kl.sum(-1)


def domain_slots(seq: torch.Tensor, item_domain: torch.Tensor, domain: int, length: int):
    """The last ``length`` items of ``domain`` in a right-padded ``seq``, left-padded.

    Returns:
        ``(slots [B, length], count [B])``, order kept, pad 0 on the left.
    """
    in_domain = item_domain[seq] == domain
    count = in_domain.sum(1, keepdim=True)
    slot = length - count + in_domain.long().cumsum(1) - 1
    keep = in_domain & (slot >= 0)
    out = seq.new_zeros(len(seq), length + 1)
    out.scatter_(1, torch.where(keep, slot, length), torch.where(keep, seq, 0))
    return out[:, :length], count.squeeze(1).clamp(max=length)


class _SequenceEncoder(nn.Module):
    """SASRec (pmixer) blocks: pre-LN attention, LN, position-wise FFN; then a weighted
    sum of the states (official: the mean over every slot; spec section 3.3).

    ``pooling``: ``all`` (official) uses no key-padding mask; any other value masks pad
    keys (a row without items keeps every key). The weights come from ``pool_weights``.
    ``max_length`` > 0 adds a learned position embedding over that many slots (the
    official encoder has none); positions count from the left of the left-padded input.
    """

    def __init__(self, hidden, n_layers, n_heads, hidden_dropout, attn_dropout, eps, causal,
                 pooling="all", max_length=0):
        super().__init__()
        self.causal = causal
        self.pooling = pooling
        self.position = nn.Embedding(max_length, hidden) if max_length else None
        self.input_dropout = nn.Dropout(hidden_dropout)
        self.attn_norms = nn.ModuleList(nn.LayerNorm(hidden, eps=eps) for _ in range(n_layers))
        self.attns = nn.ModuleList(
            nn.MultiheadAttention(hidden, n_heads, dropout=attn_dropout, batch_first=True)
            for _ in range(n_layers)
        )
        self.ffn_norms = nn.ModuleList(nn.LayerNorm(hidden, eps=eps) for _ in range(n_layers))
        self.ffns = nn.ModuleList(
            nn.Sequential(
                nn.Linear(hidden, hidden),
                nn.Dropout(hidden_dropout),
                nn.ReLU(),
                nn.Linear(hidden, hidden),
                nn.Dropout(hidden_dropout),
            )
            for _ in range(n_layers)
        )
        self.last_norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, seq_emb: torch.Tensor, seq: torch.Tensor, weights: torch.Tensor):
        """``[B, L, H]`` embeddings of ids ``seq [B, L]``, pooling weights ``[B, L]``
        (see ``pool_weights``) -> (states ``[B, L, H]``, pooled ``[B, H]``)."""
        length = seq_emb.shape[1]
        mask = None
        if self.causal:
            mask = torch.ones(length, length, dtype=torch.bool, device=seq_emb.device).triu(1)
        pad_keys = None
        if self.pooling != "all":
            # pads are masked as keys; a row without items keeps every key
            empty = (seq != 0).sum(1, keepdim=True) == 0
            pad_keys = (seq == 0) & ~empty
            if mask is not None:
                # a causal row whose visible keys are all pads: let it see its own slot
                pad_keys = pad_keys.unsqueeze(1) | mask.unsqueeze(0)
                pad_keys = pad_keys & ~torch.eye(length, dtype=torch.bool,
                                                 device=seq.device).unsqueeze(0)
                pad_keys = pad_keys.repeat_interleave(self.attns[0].num_heads, 0)
                mask = None
        if self.position is not None:
            seq_emb = seq_emb + self.position.weight[:length].unsqueeze(0)
        states = self.input_dropout(seq_emb)
        for attn_norm, attn, ffn_norm, ffn in zip(
            self.attn_norms, self.attns, self.ffn_norms, self.ffns
        ):
            query = attn_norm(states)
            if pad_keys is not None and pad_keys.dim() == 3:
                out = attn(query, states, states, attn_mask=pad_keys, need_weights=False)[0]
            else:
                out = attn(query, states, states, attn_mask=mask, key_padding_mask=pad_keys,
                           need_weights=False)[0]
            states = query + out
            states = ffn_norm(states)
            states = states + ffn(states)
        states = self.last_norm(states)
        # NOTE: official pooling (``all``) averages pads too (no padding mask).
        return states, (weights.unsqueeze(2) * states).sum(1)


def pool_weights(seq: torch.Tensor, real: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pooling weights ``[B, L]`` (rows sum to 1) of a left-padded id sequence ``seq``.

    ``real [L]`` marks the slots that hold the row's own history (all of them for a plain
    history; every other slot for the interleaved augmented one). ``all`` (official):
    uniform over every slot, pads included; ``items``: uniform over non-pad slots;
    ``last``: the last non-pad ``real`` slot (the most recent history item). A row with
    nothing to pick falls back to ``items``, then to ``all``.
    """
    uniform = torch.ones_like(seq, dtype=torch.float)
    if pooling == "all":
        return uniform / seq.shape[1]
    items = (seq != 0).float()
    weights = torch.where(items.sum(1, keepdim=True) == 0, uniform, items)
    if pooling == "last":
        own = items * real.float().unsqueeze(0)
        # last own slot: the one whose own-slot count to its right is zero
        is_last = own * (own.flip(1).cumsum(1).flip(1) == 1).float()
        weights = torch.where(own.sum(1, keepdim=True) == 0, weights, is_last)
    return weights / weights.sum(1, keepdim=True)


class _GaussianEncoder(nn.Module):
    """Mult-VAE style q(z|h): dropout(h / |h|) -> tanh layer -> (mu, log-scale)."""

    def __init__(self, in_size: int, latent: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.hidden = nn.Linear(in_size, 2 * latent)
        self.out = nn.Linear(2 * latent, 2 * latent)

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        normed = self.dropout(F.normalize(pooled, dim=-1))
        mu, logscale = self.out(torch.tanh(self.hidden(normed))).chunk(2, dim=-1)
        return mu, logscale


def _decoder(latent: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(latent, 2 * hidden), nn.Tanh(), nn.Linear(2 * hidden, hidden))


class I2VAEDataset(CDSRDataset):
    """CDSRDataset whose splits carry ``psg_table``: LightGCN pseudo-sequences per user.

    ``psg_table`` is a LongTensor ``[n_users, 2, history_length]`` (see i2vae_psg.py),
    computed from the built splits (train graph only) or read from its cache file;
    ``psg_cached`` says which.
    """

    def __init__(self, config):
        check_psg_config(config)
        super().__init__(config)
        if self.n_domains != 2:
            raise ValueError(
                f"I2VAE is a two-domain model; {self.dataset_name} has {self.n_domains} "
                f"domains {self.domain_names}"
            )

    def build(self) -> list:
        datasets = super().build()
        table, cached = pseudo_sequences(datasets, self.config)
        for part in [self, *datasets]:
            part.psg_table, part.psg_cached = table, cached
        return datasets


class I2VAE(SequentialRecommender):
    """Two domain encoders, VAE latents per domain, cross-domain transfer latents and
    pseudo-sequence augmented latents; an MLP (official) or a dot product (``scorer``)
    scores (user vector, item) pairs.

    Batch fields: user_id (pseudo-sequence lookup), item_id (target; its domain picks
    the head), and either ``history_fields`` (per-domain histories, e.g. hist_x/hist_y)
    or item_id_list (mixed history, split by item domain).
    calculate_loss returns (rec, prior_kl, cross_kl, denoise_kl, discriminator), each
    already weighted; their sum is Eq. total = L_rec + aug_lambda L_den + L_KL.
    """

    input_type = InputType.POINTWISE  # the model draws its own negative
    loss_names = ("rec", "prior_kl", "cross_kl", "denoise_kl", "discriminator")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        check_choice(config, "trans_encoder", TRANS_ENCODERS, "I2VAE")
        check_choice(config, "sequence_order", SEQUENCE_ORDERS, "I2VAE")
        self.loss_type = check_choice(config, "loss_type", LOSS_TYPES, "I2VAE")
        self.scorer = check_choice(config, "scorer", SCORERS, "I2VAE")
        self.pooling = pooling = check_choice(config, "pooling", POOLINGS, "I2VAE")
        if not isinstance(config["position_embedding"], bool):
            raise ValueError(
                f"I2VAE: position_embedding must be True or False (official False), "
                f"got {config['position_embedding']!r}")
        for key, official in (("latent_noise_scale", 1.0), ("item_init_std", 1.0),
                              ("prior_free_bits", 0.0)):
            value = config[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(
                    f"I2VAE: {key} must be a number >= 0 (official {official}), got {value!r}")
        self.noise_scale = float(config["latent_noise_scale"])
        self.user_skip = config["user_skip"]
        if not isinstance(self.user_skip, bool):
            raise ValueError(
                f"I2VAE: user_skip must be True or False (official False), got {self.user_skip!r}")
        self.prior_free_bits = float(config["prior_free_bits"])
        init_std = float(config["item_init_std"])
        self.kl_warmup_steps = config["kl_warmup_steps"]
        if not isinstance(self.kl_warmup_steps, int) or self.kl_warmup_steps < 0:
            raise ValueError(
                f"I2VAE: kl_warmup_steps must be an int >= 0 (0 = no warm-up), "
                f"got {self.kl_warmup_steps!r}")
        # training steps taken, for the KL warm-up (not saved: a reload restarts it)
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long), persistent=False)
        if getattr(dataset, "psg_table", None) is None:
            raise ValueError(
                "I2VAE needs pseudo-sequences: build the dataset with I2VAEDataset "
                "(recbole_cdsr.utils.create_dataset does it for model I2VAE)"
            )
        if dataset.n_domains != 2:
            raise ValueError(f"I2VAE is a two-domain model, got domains {dataset.domain_names}")
        # hyper-parameters (properties/model/I2VAE.yaml)
        self.hidden_size = config["hidden_size"]
        self.latent_size = config["latent_size"]
        self.history_length = config["history_length"]
        self.trans_encoder = config["trans_encoder"]
        self.cs_setting = config["cs_setting"]
        self.faithful_aug_decode = config["faithful_aug_decode"]
        self.faithful_loss_broadcast = config["faithful_loss_broadcast"]
        self.prior_weight = config["prior_weight"]
        self.aug_kl_weight = _pair(config, "aug_kl_weight")  # lambda_a^X, lambda_a^Y
        self.cross_kl_weight = _pair(config, "cross_kl_weight")  # lambda_t^X, lambda_t^Y
        self.discriminator_weight = config["discriminator_weight"]  # aug_lambda
        self.length_weight_exp = config["length_weight_exp"]  # exp_a
        self.history_fields = list(config["history_fields"] or [])
        if self.history_fields and (
            len(self.history_fields) != 2
            or any(f not in dataset.field2type for f in self.history_fields)
        ):
            raise ValueError(
                f"I2VAE: history_fields must name the two loaded per-domain history "
                f"fields, got {self.history_fields}; loaded: {sorted(dataset.field2type)}. "
                f"Add them to load_col.inter and alias_of_item_id, or set history_fields: ~"
            )
        if dataset.psg_table.shape[2] != self.history_length:
            raise ValueError(
                f"I2VAE: pseudo-sequences hold {dataset.psg_table.shape[2]} items, "
                f"history_length is {self.history_length}"
            )

        self.register_buffer("item_domain", dataset.item_domain.clone())
        self.register_buffer("psg_table", dataset.psg_table.clone())
        self._init_domain_items()
        self.register_buffer("tail_len", self._tail_len(config, dataset))

        hidden, latent = self.hidden_size, self.latent_size
        encoder_args = (
            hidden,
            config["n_layers"],
            config["n_heads"],
            config["hidden_dropout_prob"],
            config["attn_dropout_prob"],
            config["layer_norm_eps"],
            config["sequence_order"] == "causal",
            pooling,
            2 * config["history_length"] if config["position_embedding"] else 0,
        )
        self.item_embedding = nn.Embedding(self.n_items, hidden)
        # official: N(0, 1) (item_init_std 1), pad row learned
        nn.init.normal_(self.item_embedding.weight, std=init_std)
        self.encoder_x = _SequenceEncoder(*encoder_args)
        self.encoder_y = _SequenceEncoder(*encoder_args)
        dropout = config["encoder_dropout_prob"]
        self.q_x = _GaussianEncoder(hidden, latent, dropout)
        self.q_y = _GaussianEncoder(hidden, latent, dropout)
        if self.cs_setting:
            self.r_x = _GaussianEncoder(hidden, latent, dropout)
            self.r_y = _GaussianEncoder(hidden, latent, dropout)
        if self.trans_encoder == "attention":
            heads = config["transfer_n_heads"]
            self.transfer_attn_x = nn.MultiheadAttention(hidden, heads, batch_first=True)
            self.transfer_attn_y = nn.MultiheadAttention(hidden, heads, batch_first=True)
            self.transfer_norm = nn.LayerNorm(hidden)  # shared by both directions
            self.transfer_out_x = nn.Linear(hidden, 2 * latent)
            self.transfer_out_y = nn.Linear(hidden, 2 * latent)
        else:
            self.transfer_mlp_x = _GaussianEncoder(2 * hidden, latent, dropout)
            self.transfer_mlp_y = _GaussianEncoder(2 * hidden, latent, dropout)
        self.p_x, self.p_y = _decoder(latent, hidden), _decoder(latent, hidden)
        self.p_tx, self.p_ty = _decoder(latent, hidden), _decoder(latent, hidden)
        self.fuse_x = nn.Linear(3 * hidden, hidden)  # D_X
        self.fuse_y = nn.Linear(3 * hidden, hidden)  # D_Y
        self.scorer_hidden = nn.Linear(2 * hidden, config["scorer_hidden_size"])
        self.scorer_out = nn.Linear(config["scorer_hidden_size"], 1)
        self.discriminator_x = nn.Linear(2 * hidden, 1)
        self.discriminator_y = nn.Linear(2 * hidden, 1)
        # learnable prior N(mu_p, g(l_p)^2) per domain (Sec. 3.10)
        self.prior_mu = nn.Parameter(torch.zeros(2))
        self.prior_logscale = nn.Parameter(torch.full((2,), PRIOR_LOGSCALE))

    # ----------------------------------------------------------------- data helpers
    def _init_domain_items(self) -> None:
        """Buffers for negative sampling: the item ids of each domain, padded."""
        lists = [torch.nonzero(self.item_domain == d).squeeze(1) for d in (0, 1)]
        width = max(1, max(len(x) for x in lists))
        table = torch.zeros(2, width, dtype=torch.long)
        for d, items in enumerate(lists):
            table[d, : len(items)] = items
        self.register_buffer("domain_items", table)
        self.register_buffer("domain_sizes", torch.tensor([len(x) for x in lists]))

    def _source_sequences(self, interaction) -> tuple[torch.Tensor, torch.Tensor]:
        if self.history_fields:
            return interaction[self.history_fields[0]], interaction[self.history_fields[1]]
        return interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ]

    def _tail_len(self, config, dataset) -> torch.Tensor:
        """Official rule per domain, on the training rows: int(mean of the shortest 80%
        of the full domain lengths (target included) that exceed 2)."""
        if config["tail_len"] is not None:
            return torch.tensor(_pair(config, "tail_len")).long()
        feat = dataset.inter_feat
        src_x, src_y = self._source_sequences(feat)
        target = self.item_domain[feat[self.ITEM_ID]]
        values = []
        for d, src in enumerate((src_x, src_y)):
            full = (self.item_domain[src] == d).sum(1) + (target == d).long()
            lengths = np.sort(full.numpy())[::-1]
            lengths = lengths[lengths > 2]
            values.append(int(lengths[int(len(lengths) * 0.2) :].mean()) if len(lengths) else 2)
        logger.info("I2VAE: tail_len (X, Y) = %s", values)
        return torch.tensor(values)

    def _histories(self, interaction):
        src_x, src_y = self._source_sequences(interaction)
        seq_x, len_x = domain_slots(src_x, self.item_domain, 0, self.history_length)
        seq_y, len_y = domain_slots(src_y, self.item_domain, 1, self.history_length)
        return seq_x, seq_y, len_x, len_y

    # ----------------------------------------------------------------- model
    def _sample(self, mu, logscale):
        if not self.training:
            return mu
        if self.noise_scale == 0:
            return mu
        return mu + self.noise_scale * sigma(logscale) * torch.randn_like(mu)

    def _transfer(self, states_x, states_y, pooled_x, pooled_y, weights_x, weights_y,
                  seq_x, seq_y):
        """(mu, l) of z_t^X (X content toward Y) and z_t^Y (Y content toward X).

        Attention: states ``[B, L, H]``; pooled ``[B, H]``; pooling weights ``[B, L]``;
        ids ``seq_x``/``seq_y`` ``[B, L]``. Under ``pooling`` other than ``all`` a slot that
        is a pad in either domain is masked as a key (none masked if that leaves none).
        """
        if self.trans_encoder == "mlp":
            return (
                self.transfer_mlp_x(torch.cat([pooled_x, pooled_y], -1)),
                self.transfer_mlp_y(torch.cat([pooled_y, pooled_x], -1)),
            )
        pad = None
        if self.pooling != "all":
            pad = (seq_x == 0) | (seq_y == 0)
            pad = pad & ~pad.all(1, keepdim=True)
        # NOTE: official code uses key = other domain, query = value = own domain.
        out_x = self.transfer_attn_x(states_x, states_y, states_x, key_padding_mask=pad,
                                     need_weights=False)[0]
        out_y = self.transfer_attn_y(states_y, states_x, states_y, key_padding_mask=pad,
                                     need_weights=False)[0]
        # mean over query positions with the encoders' pooling weights (official: all)
        pool_x = (weights_x.unsqueeze(2) * self.transfer_norm(out_x)).sum(1)
        pool_y = (weights_y.unsqueeze(2) * self.transfer_norm(out_y)).sum(1)
        return self.transfer_out_x(pool_x).chunk(2, -1), self.transfer_out_y(pool_y).chunk(2, -1)

    def forward(self, interaction) -> dict:
        """Encodes a batch.

        Returns:
            dict with ``user_x``/``user_y`` ``[B, H]``, ``post`` (name -> (mu, l) of the
            latents x, y, xa, ya, tx, ty[, rx, ry]), ``disc_x``/``disc_y`` logits ``[B]``,
            ``len_x``/``len_y`` ``[B]`` and ``seq_x``/``seq_y`` ``[B, L]``.
        """
        seq_x, seq_y, len_x, len_y = self._histories(interaction)
        psg = self.psg_table[interaction[self.USER_ID]]
        batch = len(seq_x)
        # interleaved augmented sequences (s_1, p_1, ..., s_L, p_L), Sec. 3.1
        aug_x = torch.stack([seq_x, psg[:, 0]], dim=2).view(batch, -1)
        aug_y = torch.stack([seq_y, psg[:, 1]], dim=2).view(batch, -1)
        own = torch.ones(self.history_length, dtype=torch.bool, device=seq_x.device)
        own_aug = torch.stack([own, ~own], 1).view(-1)  # history slots of (s_1, p_1, ...)
        weights_x = pool_weights(seq_x, own, self.pooling)
        weights_y = pool_weights(seq_y, own, self.pooling)
        states_x, pooled_x = self.encoder_x(self.item_embedding(seq_x), seq_x, weights_x)
        states_y, pooled_y = self.encoder_y(self.item_embedding(seq_y), seq_y, weights_y)
        _, pooled_xa = self.encoder_x(
            self.item_embedding(aug_x), aug_x, pool_weights(aug_x, own_aug, self.pooling))
        _, pooled_ya = self.encoder_y(
            self.item_embedding(aug_y), aug_y, pool_weights(aug_y, own_aug, self.pooling))

        post = {
            "x": self.q_x(pooled_x),
            "xa": self.q_x(pooled_xa),
            "y": self.q_y(pooled_y),
            "ya": self.q_y(pooled_ya),
        }
        post["tx"], post["ty"] = self._transfer(
            states_x, states_y, pooled_x, pooled_y, weights_x, weights_y, seq_x, seq_y)
        if self.cs_setting:
            post["rx"], post["ry"] = self.r_x(pooled_x), self.r_y(pooled_y)
        z = {name: self._sample(*post[name]) for name in ("x", "xa", "y", "ya", "tx", "ty")}

        dec_x = self.p_x(z["x"])
        # NOTE: official code decodes z^X here (pseudo items never reach X scores).
        dec_xa = dec_x if self.faithful_aug_decode else self.p_x(z["xa"])
        dec_y, dec_ya = self.p_y(z["y"]), self.p_y(z["ya"])
        dec_tx, dec_ty = self.p_tx(z["tx"]), self.p_ty(z["ty"])
        if self.cs_setting and not self.training:
            # cold-start routing: no target-domain history -> r-encoder of the other domain
            cold_x, cold_y = (len_x == 0).unsqueeze(1), (len_y == 0).unsqueeze(1)
            dec_ty = torch.where(cold_x, self.p_ty(post["ry"][0]), dec_ty)
            dec_tx = torch.where(cold_y, self.p_tx(post["rx"][0]), dec_tx)
        user_x = self.fuse_x(torch.cat([dec_x, dec_ty, dec_xa], -1))
        user_y = self.fuse_y(torch.cat([dec_y, dec_tx, dec_ya], -1))
        if self.user_skip:
            # not in the paper: the encoders' pooled states bypass the latents
            user_x, user_y = user_x + pooled_x, user_y + pooled_y
        return {
            "user_x": user_x,
            "user_y": user_y,
            "post": post,
            "disc_x": self.discriminator_x(torch.cat([pooled_xa, dec_xa], -1)).squeeze(1),
            "disc_y": self.discriminator_y(torch.cat([pooled_ya, dec_ya], -1)).squeeze(1),
            "len_x": len_x,
            "len_y": len_y,
            "seq_x": seq_x,
            "seq_y": seq_y,
        }

    def _score(self, user: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scorer logits, ``[B, H]`` x ``[B]`` items -> ``[B]`` (MLP or dot product)."""
        if self.scorer == "dot":
            return (user * self.item_embedding(items)).sum(-1)
        hidden = F.relu(self.scorer_hidden(torch.cat([user, self.item_embedding(items)], -1)))
        return self.scorer_out(hidden).squeeze(-1)

    def _score_all(self, user: torch.Tensor) -> torch.Tensor:
        """Scorer logits of every item, ``[B, N]``: u E^T (dot), or the MLP with
        W1 = [W_u | W_i] split so each part is computed once."""
        if self.scorer == "dot":
            return user @ self.item_embedding.weight.T
        weight, bias = self.scorer_hidden.weight, self.scorer_hidden.bias
        user_part = F.linear(user, weight[:, : self.hidden_size], bias)  # [B, h]
        item_part = F.linear(self.item_embedding.weight, weight[:, self.hidden_size :])  # [N, h]
        chunk = max(1, (1 << 24) // max(1, user_part.numel()))
        scores = []
        for start in range(0, len(item_part), chunk):
            hidden = F.relu(user_part.unsqueeze(1) + item_part[start : start + chunk].unsqueeze(0))
            scores.append(self.scorer_out(hidden).squeeze(-1))
        return torch.cat(scores, dim=1)

    def _target_user(self, out: dict, target_domain: torch.Tensor) -> torch.Tensor:
        return torch.where((target_domain == 0).unsqueeze(1), out["user_x"], out["user_y"])

    # ----------------------------------------------------------------- loss
    def _sample_negatives(self, pos, target, history, tries: int = 10) -> torch.Tensor:
        """One item per row, uniform over the target domain, not the positive nor in
        the row's target-domain history (resampled up to ``tries`` times)."""
        sizes = self.domain_sizes[target]
        neg = pos.clone()
        bad = torch.ones_like(pos, dtype=torch.bool)
        for _ in range(tries):
            idx = (torch.rand(len(pos), device=pos.device) * sizes).long()
            draw = self.domain_items[target, idx]
            neg = torch.where(bad, draw, neg)
            bad = (neg == pos) | (neg.unsqueeze(1) == history).any(1)
            if not bad.any():
                break
        return neg

    def _length_weight(self, length: torch.Tensor) -> torch.Tensor:
        """w(len) = exp(a len / L) - 0.8: 0.2 at 0, 1.4255 at L = 20 (a = 0.8)."""
        return torch.exp(self.length_weight_exp * length.float() / self.history_length) - 0.8

    def loss_terms(self, interaction, out: dict | None = None) -> dict:
        """Every unweighted term, per row ``[B]`` (see spec section 3.15)."""
        out = self.forward(interaction) if out is None else out
        pos = interaction[self.ITEM_ID]
        target = self.item_domain[pos]
        history = torch.where((target == 0).unsqueeze(1), out["seq_x"], out["seq_y"])
        user = self._target_user(out, target)
        if self.loss_type == "CE":
            # softmax over the target's domain (other domains and PAD masked)
            logits = self._score_all(user)
            other = self.item_domain.unsqueeze(0) != target.unsqueeze(1)
            rec = F.cross_entropy(logits.masked_fill(other, float("-inf")), pos,
                                  reduction="none")
        else:
            neg = self._sample_negatives(pos, target, history)
            pos_logit, neg_logit = self._score(user, pos), self._score(user, neg)
            bce = F.binary_cross_entropy_with_logits
            rec = 0.5 * (
                bce(pos_logit, torch.ones_like(pos_logit), reduction="none")
                + bce(neg_logit, torch.zeros_like(neg_logit), reduction="none")
            )
        post = out["post"]
        zero = torch.zeros_like(self.prior_mu[0])
        std_prior = (zero, zero + PRIOR_LOGSCALE)  # N(0, g(1)^2), the "standard" prior
        prior = [(self.prior_mu[d], self.prior_logscale[d]) for d in (0, 1)]
        kl = gaussian_kl

        def prior_kl(mu, logscale, mu_p, logscale_p):
            return gaussian_kl(mu, logscale, mu_p, logscale_p, self.prior_free_bits)
        terms = {
            "rec": rec,
            # G: prior KLs (the disentangling regularizer, Sec. 3.13)
            "g_x": prior_kl(*post["ty"], *std_prior)
            + prior_kl(*post["x"], *prior[0])
            + prior_kl(*post["xa"], *prior[0]),
            "g_y": prior_kl(*post["tx"], *std_prior)
            + prior_kl(*post["y"], *prior[1])
            + prior_kl(*post["ya"], *prior[1]),
            # A: denoising KL between augmented and real latents
            "a_x": kl(*post["xa"], *post["x"]),
            "a_y": kl(*post["ya"], *post["y"]),
            "w_x": self._length_weight(out["len_x"]),
            "w_y": self._length_weight(out["len_y"]),
            # discriminator, positive pairs only: -log sigmoid(logit)
            "d_x": F.softplus(-out["disc_x"]),
            "d_y": F.softplus(-out["disc_y"]),
            "mask_x": (target == 0).float(),
            "mask_y": (target == 1).float(),
        }
        # T: cross-domain KL (Sec. 3.11)
        if self.cs_setting:
            terms["t_x"] = kl(*post["ty"], *post["ry"])
            terms["t_y"] = kl(*post["tx"], *post["rx"])
        else:
            terms["t_x"] = kl(*post["ty"], *post["y"])
            terms["t_y"] = kl(*post["tx"], *post["x"])
        own_len = torch.where(target == 0, out["len_x"], out["len_y"])
        terms["tail"] = ((own_len + 1) <= self.tail_len[target]).float()
        return terms

    def combine(self, t: dict) -> tuple[torch.Tensor, ...]:
        """Weighted (rec, prior_kl, cross_kl, denoise_kl, discriminator) from loss_terms."""
        (ax, ay), (tx, ty) = self.aug_kl_weight, self.cross_kl_weight
        mx, my = t["mask_x"], t["mask_y"]
        if self.faithful_loss_broadcast:
            # NOTE: official [B] * [B, 1] broadcasting = products of batch means
            fx, fy = mx.mean(), my.mean()
            prior = fx * t["g_x"].mean() + fy * t["g_y"].mean()
            cross = fx * tx * t["t_x"].mean() + fy * ty * t["t_y"].mean()
            denoise = (
                fx * ax * t["w_x"].mean() * t["a_x"].mean()
                + fy * ay * t["w_y"].mean() * t["a_y"].mean()
            )
            disc = (mx * t["d_x"] + my * t["d_y"]).mean() * (1 - t["tail"]).mean()
        else:
            prior = (mx * t["g_x"] + my * t["g_y"]).mean()
            cross = (mx * tx * t["t_x"] + my * ty * t["t_y"]).mean()
            denoise = (mx * ax * t["w_x"] * t["a_x"] + my * ay * t["w_y"] * t["a_y"]).mean()
            disc = ((1 - t["tail"]) * (mx * t["d_x"] + my * t["d_y"])).mean()
        return (
            t["rec"].mean(),
            self.prior_weight * prior,
            cross,
            denoise,
            self.discriminator_weight * disc,
        )

    def kl_scale(self) -> float:
        """Weight of the KL terms (prior, cross, denoise): min(1, step / kl_warmup_steps)
        over the training steps taken so far; 1 without warm-up."""
        if self.kl_warmup_steps == 0:
            return 1.0
        return min(1.0, int(self.train_steps) / self.kl_warmup_steps)

    def calculate_loss(self, interaction) -> tuple[torch.Tensor, ...]:
        rec, prior, cross, denoise, disc = self.combine(self.loss_terms(interaction))
        scale = self.kl_scale()
        if self.training:
            self.train_steps += 1
        return rec, scale * prior, scale * cross, scale * denoise, disc

    # ----------------------------------------------------------------- scoring
    def predict(self, interaction) -> torch.Tensor:
        out = self.forward(interaction)
        items = interaction[self.ITEM_ID]
        return self._score(self._target_user(out, self.item_domain[items]), items)

    def full_sort_predict(self, interaction) -> torch.Tensor:
        """Target-domain head logits of every item ``[B, N]``; -inf at PAD and at items
        outside the row's target domain (the domain of its item_id)."""
        out = self.forward(interaction)
        target = self.item_domain[interaction[self.ITEM_ID]]
        scores = self._score_all(self._target_user(out, target))
        other = self.item_domain.unsqueeze(0) != target.unsqueeze(1)
        return scores.masked_fill(other, float("-inf"))
