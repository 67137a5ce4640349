"""ADARec: two diffusion-augmented SASRec experts with learnable intent clustering.

Paper: Xiaoxi Cui, Chao Zhao, Yurong Cheng, Xiangmin Zhou. "De-collapsing User Intent:
Adaptive Diffusion Augmentation with Mixture-of-Experts for Sequential Recommendation."
AAAI 2026 (listed on papers.cool; full text not available to us).
Code:  github.com/ZhaoChao52/ADARec @ 90faad2 (src/models.py, src/trainers.py, src/main.py;
built on ELCRec/ICLRec). We implement what the released code does (spec adarec.md 3), not the
paper's framework figure (no router, gate, reverse chain or Gumbel depth exist in the code).

Differences from the official code:
  (1) Cluster centres are initialised (``cluster_init``: k-means over the first eval pass,
      faiss when importable, else torch; or N(0,1) normalised); the official code leaves them
      as uninitialised memory (``torch.Tensor(K, d)``).
  (2) One Adam over both experts instead of one per expert (update-for-update identical:
      disjoint parameters, summed loss); a stopped expert is frozen with requires_grad=False.
  (3) Per expert and step, one embedding call on the 5B sequences (main, instance-CL views,
      intent-CL views), one controller (GRU) call, one encoder call on 6B: the official code
      also encodes the 4B contrastive views raw and discards the result. Same losses.
      The two Gaussian draws of the mixed noise are merged into one draw of the same
      variance (equal in distribution).
  (4) Views are built from the RecBole history (truncated to ``MAX_ITEM_LIST_LENGTH``), not
      from the untruncated one, and the controller's length is ``item_length`` (<= L),
      not the untruncated length (affects users with more than L + 3 items).
  (5) Negatives: uniform over the items with 3 rejection rounds against the row's input and
      target; the official code also rejects the user's valid/test items (a leak).
  (6) Evaluation is RecBole's full ranking (CDSRTrainer): PAD is -inf, no phantom
      ``max_item + 1`` row, the history is not masked (``mask_history_in_eval`` sets it to
      -inf, the official code sets it to 0).
  (7) Per-expert early stopping on ``valid_metric`` with patience ``stopping_step``
      (official: NDCG@20, 40); after training the fused model made of each expert's best
      snapshot is validated once, and that is the reported valid result.
  (8) ``train_sampling: all_prefix`` (RecBole's prefix augmentation, loss at the last
      position only) is offered beside the official one-row-per-user training (``last``).
  (9) Unused or dead official knobs are not implemented: noise_ratio, training_data_ratio,
      de_noise, prototype, monitor_clustering, the single-expert paths (which crash).
  (10) Padding: the official poolings and depth controller read the left padding
      (``pool_include_padding``, ``controller_include_padding``, both True = official).
      With both False no loss reads a pad: each batch is cut to its longest row and its
      rows are encoded in chunks of similar length (``encode_by_length``), the batch
      itself staying a random one (length-bucketed *batches* measured worse: with a loss
      at every position they weight a short-history batch's few targets like a long
      one's many, and pair similar-length rows as contrastive negatives). The
      per-position random draws (views, noise, negatives) are taken at the full width
      and cut, so this computes exactly what the padded batch does
      (``tests/test_speed_exact.py``). Scoring always cuts (it reads the last column).
"""

from __future__ import annotations

import logging
from time import time

import numpy as np
import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import TransformerEncoder
from recbole.utils import dict2str, set_color
from torch import nn

from recbole_cdsr.data.dataset import CDSRDataset, sequence_rows
from recbole_cdsr.model.layers import init_recbole_weights
from recbole_cdsr.trainer import CDSRTrainer, save_checkpoint
from recbole_cdsr.utils import check_choice

logger = logging.getLogger(__name__)

LOSS_TYPES = ("BCE", "CE")
TRAIN_SAMPLINGS = ("last", "all_prefix")
CLUSTER_INITS = ("kmeans", "normal")
EVAL_EXPERTS = ("A", "B", "fused")
CL_SIMILARITIES = ("dot", "cos")
EXPERT_NAMES = ("A", "B")
ENCODE_CHUNK_ROWS = 128  # rows per encoder call when padding-free rows are encoded by length
MAX_LENGTH_ID = 512  # official controller length vocabulary: 513 rows, lengths clamped at 512
ATTENTION_FILL = -10000.0  # official additive mask value (not -inf: pad rows stay finite)


# ----------------------------------------------------------------------------- helpers
def alpha_bar_schedule(n_steps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """DDPM cumulative product of (1 - beta_t) for a linear beta schedule, [T] float64."""
    betas = torch.linspace(beta_start, beta_end, n_steps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def left_pad(item_seq: torch.Tensor, item_len: torch.Tensor, out_len: int) -> torch.Tensor:
    """Right-padded ``[B, S]`` ids of lengths ``[B]`` -> left-padded ``[B, out_len]``."""
    cols = torch.arange(out_len, device=item_seq.device)
    src = cols.unsqueeze(0) - (out_len - item_len.unsqueeze(1))
    out = item_seq.gather(1, src.clamp(0, item_seq.size(1) - 1))
    return out.masked_fill(src < 0, 0)


def causal_attention_mask(item_seq: torch.Tensor) -> torch.Tensor:
    """Additive mask [B, 1, L, L]: 0 where key j <= query i and x_j != 0, else -10000."""
    keep = (item_seq != 0).unsqueeze(1).unsqueeze(2)
    keep = torch.tril(keep.expand(-1, -1, item_seq.size(-1), -1))
    return torch.where(keep, 0.0, ATTENTION_FILL)


def _floor_ratio(n: torch.Tensor, ratio: float) -> torch.Tensor:
    # int(ratio * n) in Python floats (float64), as the official augmentations compute it
    return torch.floor(n.double() * ratio).long()


def _uniform_index(span: torch.Tensor) -> torch.Tensor:
    """One uniform draw from {0, .., span-1} per row (0 where span <= 0)."""
    draw = torch.rand(span.shape, device=span.device, dtype=torch.float64) * span.clamp(min=1)
    return torch.minimum(draw.long(), (span - 1).clamp(min=0))


def crop_view(x: torch.Tensor, n: torch.Tensor, ratio: float) -> torch.Tensor:
    """ICLRec Crop on left-padded ``x`` with ``n`` real items: a window of
    max(1, floor(ratio * n)) items that never covers the last item (single item if < 1)."""
    width = x.size(1)
    m = _floor_ratio(n, ratio)
    single = m < 1
    start = _uniform_index(torch.where(single, n, n - m))
    m = m.clamp(min=1)
    j = torch.arange(width, device=x.device).unsqueeze(0) - (width - m).unsqueeze(1)
    src = (width - n + start).unsqueeze(1) + j
    keep = (j >= 0) & (n > 0).unsqueeze(1)
    return x.gather(1, src.clamp(0, width - 1)).masked_fill(~keep, 0)


def right_cols_draw(sample, rows: int, width: int, full_width: int, *trailing, **kwargs):
    """``sample(rows, max(width, full_width), *trailing, **kwargs)`` cut to its last
    ``width`` columns: a left-padded batch cut to ``width`` columns gets the same draws at
    its real positions as at the full width (exact cuts). ``[rows, width, *trailing]``."""
    full = sample(rows, max(width, full_width), *trailing, **kwargs)
    return full[:, full.size(1) - width :]


def mask_view(x: torch.Tensor, n: torch.Tensor, ratio: float, full_width: int = 0) -> torch.Tensor:
    """ICLRec Mask: floor(ratio * n) distinct real positions set to the PAD id 0."""
    width = x.size(1)
    real = torch.arange(width, device=x.device).unsqueeze(0) >= (width - n).unsqueeze(1)
    keys = right_cols_draw(torch.rand, x.size(0), width, full_width, device=x.device)
    keys = keys.masked_fill(~real, 2.0)
    rank = keys.argsort(1).argsort(1)
    return x.masked_fill(rank < _floor_ratio(n, ratio).unsqueeze(1), 0)


def reorder_view(
    x: torch.Tensor, n: torch.Tensor, ratio: float, full_width: int = 0
) -> torch.Tensor:
    """ICLRec Reorder: a window of floor(ratio * n) items (never the last) is shuffled."""
    width = x.size(1)
    m = _floor_ratio(n, ratio)
    col_start = (width - n + _uniform_index(n - m)).unsqueeze(1)
    cols = torch.arange(width, device=x.device, dtype=torch.float64).unsqueeze(0)
    window = (cols >= col_start) & (cols < col_start + m.unsqueeze(1))
    draw = right_cols_draw(
        torch.rand, x.size(0), width, full_width, device=x.device, dtype=torch.float64
    )
    jitter = col_start + draw * m.unsqueeze(1)
    keys = torch.where(window, jitter, cols.expand_as(jitter))
    return x.gather(1, keys.argsort(dim=1, stable=True))


def random_views(x: torch.Tensor, crop: float, mask: float, reorder: float,
                 full_width: int = 0) -> torch.Tensor:
    """One view per row of left-padded ``x`` ``[B, W]``, each with a uniformly chosen
    operator. ``full_width`` (>= W): the per-position draws are taken as if the rows were
    that wide, so the views do not depend on how much left padding was cut."""
    n = (x != 0).sum(1)
    method = torch.randint(3, (x.size(0), 1), device=x.device)
    out = torch.where(method == 0, crop_view(x, n, crop), mask_view(x, n, mask, full_width))
    return torch.where(method == 2, reorder_view(x, n, reorder, full_width), out)


def nce_loss(
    a: torch.Tensor, b: torch.Tensor, temperature: float, intent_ids=None, similarity: str = "dot"
) -> torch.Tensor:
    """ICLRec NCELoss over 2B rows; row i targets a_i.b_i, row B+i targets b_i.a_i.

    Without ``intent_ids`` the self-similarities are excluded; with them every same-intent
    pair is excluded, except the positive (false-negative masking). ``similarity='dot'``
    (official) scores raw dot products, whose scale grows with the width of ``a`` (flattened
    [L*H] rows give logits in the hundreds at initialisation); ``'cos'`` normalises the rows
    first, so every logit lies in [-1/temperature, 1/temperature].
    """
    if similarity == "cos":
        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    sim_aa = a @ a.T / temperature
    sim_bb = b @ b.T / temperature
    sim_ab = a @ b.T / temperature
    eye = torch.eye(len(a), dtype=torch.bool, device=a.device)
    if intent_ids is None:
        same = eye
        cross = torch.zeros_like(eye)
    else:
        same = intent_ids.view(-1, 1) == intent_ids.view(1, -1)
        cross = same & ~eye
    sim_aa = sim_aa.masked_fill(same, float("-inf"))
    sim_bb = sim_bb.masked_fill(same, float("-inf"))
    sim_ab = sim_ab.masked_fill(cross, float("-inf"))
    logits = torch.cat(
        [torch.cat([sim_ab, sim_aa], dim=1), torch.cat([sim_bb, sim_ab.T], dim=1)], dim=0
    )
    labels = torch.arange(2 * len(a), device=a.device)
    return F.cross_entropy(logits, labels)


def exploration_loss(mix: torch.Tensor) -> torch.Tensor:
    """L_expl: minus the mean entropy of the controller's mixtures [B, 2]."""
    return (mix * torch.log(mix + 1e-8)).sum(-1).mean()


def kmeans_centroids(points: torch.Tensor, k: int, n_iter: int, seed: int) -> torch.Tensor:
    """``k`` k-means centroids of ``points`` [n, d] (faiss when importable, else torch)."""
    points = points.float().cpu()
    n, dim = points.shape
    generator = torch.Generator().manual_seed(seed)
    if n < k:
        logger.warning("ADARec: %d sequences < %d clusters; %d centres start random", n, k, k - n)
        extra = F.normalize(torch.randn(k - n, dim, generator=generator), dim=1)
        return torch.cat([points, extra])
    try:
        import faiss
    except ImportError:
        faiss = None
    if faiss is not None:
        kmeans = faiss.Kmeans(
            dim, k, niter=n_iter, seed=seed, verbose=False, min_points_per_centroid=1
        )
        kmeans.train(np.ascontiguousarray(points.numpy(), dtype=np.float32))
        return torch.from_numpy(kmeans.centroids.copy())
    centres = points[torch.randperm(n, generator=generator)[:k]].clone()
    for _ in range(n_iter):
        assign = torch.cdist(points, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1)
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
    return centres


# ----------------------------------------------------------------------------- modules
class DepthController(nn.Module):
    """GRU over the detached input + length embedding -> softmax over the two noise levels.

    ``include_padding`` True (official): the GRU runs over every column of the
    left-padded input, pads first; False: from each row's first non-pad column to its
    end (packed; a mask view's interior pads are kept, its leading ones skipped), so the
    mixture does not depend on the padding width.
    """

    def __init__(self, hidden_size: int, n_levels: int = 2, include_padding: bool = True):
        super().__init__()
        self.gru = nn.GRU(hidden_size, hidden_size, batch_first=True)
        self.length_embedding = nn.Embedding(MAX_LENGTH_ID + 1, hidden_size)
        self.fc = nn.Linear(2 * hidden_size, n_levels)
        self.include_padding = include_padding

    def forward(
        self, seq_emb: torch.Tensor, seq_len: torch.Tensor, ids: torch.Tensor
    ) -> torch.Tensor:
        """``seq_emb`` ``[B, W, H]`` of the left-padded ``ids`` ``[B, W]``, ``seq_len``
        ``[B]`` (number of non-pad ids) -> mixture ``[B, 2]``."""
        if self.include_padding:
            _, last = self.gru(seq_emb)  # left-padded: the last step is the last real item
        else:
            width = seq_emb.size(1)
            real = width - (ids != 0).int().argmax(1)  # columns from the first non-pad id
            # left-padded -> left-aligned, then packed: the GRU never sees a leading pad
            cols = torch.arange(width, device=seq_emb.device).unsqueeze(0)
            src = cols + (width - real).unsqueeze(1)
            index = src.clamp(max=width - 1).unsqueeze(-1).expand(-1, -1, seq_emb.size(-1))
            packed = nn.utils.rnn.pack_padded_sequence(
                seq_emb.gather(1, index), real.cpu(), batch_first=True, enforce_sorted=False
            )
            _, last = self.gru(packed)
        length = self.length_embedding(seq_len.clamp(0, MAX_LENGTH_ID))
        # NOTE: the figure shows Gumbel-softmax over depths; the code uses a plain softmax
        return torch.softmax(self.fc(torch.cat([last[-1], length], dim=-1)), dim=-1)  # [B, 2]


class ADARecExpert(nn.Module):
    """One expert: ICLRec SASRec backbone, depth controller, noise levels, intent centres."""

    def __init__(self, config, n_items: int, max_len: int, levels, alpha_bar: torch.Tensor):
        super().__init__()
        hidden = config["hidden_size"]
        self.initializer_range = config["initializer_range"]
        self.item_embedding = nn.Embedding(n_items, hidden, padding_idx=0)
        self.position_embedding = nn.Embedding(max_len, hidden)
        self.layer_norm = nn.LayerNorm(hidden, eps=config["layer_norm_eps"])
        self.dropout = nn.Dropout(config["hidden_dropout_prob"])
        self.encoder = TransformerEncoder(
            n_layers=config["n_layers"],
            n_heads=config["n_heads"],
            hidden_size=hidden,
            inner_size=config["inner_size"],
            hidden_dropout_prob=config["hidden_dropout_prob"],
            attn_dropout_prob=config["attn_dropout_prob"],
            hidden_act=config["hidden_act"],
            layer_norm_eps=config["layer_norm_eps"],
        )
        self.apply(self._init_weights)
        # Built after the init, as officially: the controller keeps PyTorch's defaults.
        self.controller = DepthController(
            hidden, len(levels), include_padding=config["controller_include_padding"]
        )
        self.max_len = max_len
        self.cluster_centers = nn.Parameter(
            F.normalize(torch.randn(config["n_intent_clusters"], hidden), dim=1)
        )
        steps = torch.as_tensor([level - 1 for level in levels])  # depth D is step t = D - 1
        self.register_buffer("signal_scale", alpha_bar[steps].sqrt().float(), persistent=False)
        self.register_buffer("noise_std", (1 - alpha_bar[steps]).sqrt().float(), persistent=False)

    def _init_weights(self, module):
        init_recbole_weights(module, self.initializer_range)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Left-padded ids ``[B, W]`` (W <= max_len) -> ``[B, W, H]``. The columns are the
        last W of the full width, so a cut batch keeps every item's position id."""
        positions = torch.arange(self.max_len - x.size(1), self.max_len, device=x.device)
        seq_emb = self.item_embedding(x) + self.position_embedding(positions)
        return self.dropout(self.layer_norm(seq_emb))

    def encode(self, seq_emb: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(seq_emb, causal_attention_mask(x), output_all_encoded_layers=False)[-1]

    def encode_by_length(self, seq_emb: torch.Tensor, x: torch.Tensor, chunk_rows: int):
        """``encode`` of left-padded rows ``[R, W, H]`` / ``[R, W]``, run on chunks of
        ``chunk_rows`` rows of similar span (columns from the first non-pad id), each cut
        to its longest span. Equal to ``encode`` from every row's first non-pad column on
        (causal attention, pad keys masked); the columns before it are 0, not the
        width-dependent outputs of pads. The batch itself is not regrouped."""
        width = x.size(1)
        span = width - (x != 0).int().argmax(1)
        order = torch.argsort(span, stable=True)
        parts = []
        for rows in order.split(chunk_rows):
            cut = width - int(span[rows].max())
            hidden = self.encode(seq_emb[rows, cut:], x[rows, cut:])
            parts.append(F.pad(hidden, (0, 0, cut, 0)))
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)
        return torch.cat(parts)[inverse]

    def diffuse(self, seq_emb: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
        """p1 q(X_t1 | X) + p2 q(X_t2 | X), closed-form forward noising, [B, L, H]."""
        scale = (mix * self.signal_scale).sum(-1)  # [B]
        # p1 s1 e1 + p2 s2 e2 with independent e1, e2 == sqrt(p1^2 s1^2 + p2^2 s2^2) e
        std = ((mix * self.noise_std) ** 2).sum(-1).sqrt()
        rows, width, hidden = seq_emb.shape
        # drawn at the full width and cut (a no-op at full width)
        noise = right_cols_draw(
            torch.randn, rows, width, self.max_len, hidden, device=seq_emb.device
        )
        return scale.view(-1, 1, 1) * seq_emb + std.view(-1, 1, 1) * noise

    def forward(self, x: torch.Tensor, seq_len: torch.Tensor):
        """Returns (H_raw, H_ada, p) in training mode, (H_raw, H_raw, None) in eval mode."""
        seq_emb = self.embed(x)
        raw = self.encode(seq_emb, x)
        if not self.training:
            return raw, raw, None
        mix = self.controller(seq_emb.detach(), seq_len, x)
        return raw, self.encode(self.diffuse(seq_emb, mix), x), mix

    def train_pass(self, x, seq_len, views, view_len, n_view_sets: int, chunk_rows=None):
        """All training outputs of one step with one embedding/controller/encoder call.

        Args:
            x: main input [B, L]; views: [V, L] (both views of every row); ``n_view_sets``
                independent forwards of the views (2: instance CL and intent CL, 1: shared).
            chunk_rows: None encodes all rows at the full width; an int encodes them in
                chunks of similar length (``encode_by_length``: pad outputs are 0).
        Returns:
            (H_raw [B, L, H], H_ada [B, L, H], p [B, 2], view outputs: n_view_sets x [V, L, H])
        """
        batch = x.size(0)
        ids = torch.cat([x] + [views] * n_view_sets)
        lengths = torch.cat([seq_len] + [view_len] * n_view_sets)
        seq_emb = self.embed(ids)  # fresh dropout per forward, as officially
        mix = self.controller(seq_emb.detach(), lengths, ids)
        noised = self.diffuse(seq_emb, mix)
        inputs, input_ids = torch.cat([seq_emb[:batch], noised]), torch.cat([x, ids])
        if chunk_rows is None:
            hidden = self.encode(inputs, input_ids)
        else:
            hidden = self.encode_by_length(inputs, input_ids, chunk_rows)
        raw, ada, view_out = hidden[:batch], hidden[batch : 2 * batch], hidden[2 * batch :]
        return raw, ada, mix[:batch], view_out.chunk(n_view_sets) if n_view_sets else ()


# ----------------------------------------------------------------------------- model
class ADARec(SequentialRecommender):
    """Two SASRec experts trained on diffusion-noised input embeddings (steps {4,5} and
    {9,10} of T=50), mixed per sequence by a GRU+length controller, with instance and
    intent contrastive learning over learnable intent centres; scores are averaged.

    Batch fields: item_id_list, item_length, item_id.
    calculate_loss returns (rec, rec_ada, deno, expl, instance_cl, intent_cl, cluster),
    each already weighted and summed over the active experts.
    """

    loss_names = ("rec", "rec_ada", "deno", "expl", "instance_cl", "intent_cl", "cluster")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.loss_type = check_choice(config, "loss_type", LOSS_TYPES, "ADARec")
        self.train_sampling = check_choice(config, "train_sampling", TRAIN_SAMPLINGS, "ADARec")
        self.cluster_init = check_choice(config, "cluster_init", CLUSTER_INITS, "ADARec")
        self.eval_expert = check_choice(config, "eval_expert", EVAL_EXPERTS, "ADARec")
        self.cl_similarity = check_choice(config, "cl_similarity", CL_SIMILARITIES, "ADARec")
        self.internal_len = config["internal_len"] or self.max_seq_length
        if self.internal_len < self.max_seq_length:
            raise ValueError(
                f"ADARec: internal_len ({self.internal_len}) must be >= MAX_ITEM_LIST_LENGTH "
                f"({self.max_seq_length}); leave it empty (~) or set k + 3 for k-item histories"
            )
        levels = [list(pair) for pair in config["expert_levels"]]
        n_steps = config["n_diffusion_steps"]
        valid = [len(p) == 2 and 1 <= min(p) <= max(p) <= n_steps for p in levels]
        if len(levels) != 2 or not all(valid):
            raise ValueError(
                f"ADARec: expert_levels must be two pairs of depths in [1, n_diffusion_steps="
                f"{n_steps}], got {config['expert_levels']!r}; official: [[4, 5], [9, 10]]"
            )
        if config["n_intent_clusters"] < 1:
            raise ValueError(
                f"ADARec: n_intent_clusters must be >= 1, got {config['n_intent_clusters']}"
            )
        # loss weights (names of the official arguments in brackets)
        self.aug_weight = config["diffusion_aug_weight"]  # diffusion_aug_rate
        self.deno_weight = config["deno_weight"]
        self.expl_weight = config["expl_weight"]
        self.instance_cl_weight = config["instance_cl_weight"]  # cf_weight
        self.intent_cl_weight = config["intent_cl_weight"]  # intent_cf_weight
        self.cluster_weight = config["cluster_weight"]  # trade_off, lambda
        self.cl_temperature = config["cl_temperature"]
        self.crop_ratio = config["crop_ratio"]  # tao
        self.mask_ratio = config["mask_ratio"]  # gamma
        self.reorder_ratio = config["reorder_ratio"]  # beta
        self.share_cl_forward = config["share_cl_forward"]
        self.pool_include_padding = config["pool_include_padding"]
        # no loss reads a pad's output: rows are encoded by length, pads skipped
        self.padding_free = (
            not self.pool_include_padding and not config["controller_include_padding"]
        )
        self.encode_chunk_rows = ENCODE_CHUNK_ROWS
        self.mask_history_in_eval = config["mask_history_in_eval"]
        self.n_neg_rounds = 3

        alpha_bar = alpha_bar_schedule(n_steps, config["beta_start"], config["beta_end"])
        self.register_buffer("alpha_bar", alpha_bar.float(), persistent=False)
        self.experts = nn.ModuleList(
            ADARecExpert(config, self.n_items, self.internal_len, pair, alpha_bar)
            for pair in levels
        )
        self.frozen: set[str] = set()

    # ------------------------------------------------------------------ expert bookkeeping
    def expert(self, name: str) -> ADARecExpert:
        return self.experts[EXPERT_NAMES.index(name)]

    def active_experts(self) -> list[str]:
        return [name for name in EXPERT_NAMES if name not in self.frozen]

    def set_expert_active(self, name: str, active: bool) -> None:
        """Freezes (requires_grad=False, no forward in training) or unfreezes an expert."""
        for param in self.expert(name).parameters():
            param.requires_grad_(active)
        (self.frozen.discard if active else self.frozen.add)(name)

    def expert_state(self, name: str) -> dict:
        """A detached copy of one expert's entries of ``state_dict()``."""
        prefix = f"experts.{EXPERT_NAMES.index(name)}."
        return {k: v.detach().clone() for k, v in self.state_dict().items() if k.startswith(prefix)}

    # ------------------------------------------------------------------ inputs and targets
    def _inputs(self, interaction, cut: bool = False):
        """Left-padded ids ``[B, W]`` and lengths ``[B]``. W is ``internal_len``, or with
        ``cut`` the batch's longest history: exact wherever only real positions are read
        (scoring reads the last column; training with ``padding_free``)."""
        item_len = interaction[self.ITEM_SEQ_LEN]
        width = self.internal_len
        if cut:
            width = min(width, max(int(item_len.max()), 1))
        return left_pad(interaction[self.ITEM_SEQ], item_len, width), item_len

    def _targets(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Positive id per position [B, L]: the next input item, ``item_id`` at the end."""
        if self.train_sampling == "last":
            pos = torch.cat([x[:, 1:], target.unsqueeze(1)], dim=1)
        else:  # all_prefix: loss at the last position only
            pos = torch.zeros_like(x)
            pos[:, -1] = target
        return pos.masked_fill(x == 0, 0)

    def _negatives(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """One uniform negative per position, rejecting the row's items (3 rounds); drawn
        at the full width and cut, like the views."""
        banned = torch.cat([x, pos[:, -1:]], dim=1).unsqueeze(1)  # [B, 1, W+1]
        def draw():
            return right_cols_draw(
                lambda *shape, **kw: torch.randint(1, self.n_items, shape, **kw),
                len(x), x.size(1), self.internal_len, device=x.device,
            )

        neg = draw()
        for _ in range(self.n_neg_rounds):
            clash = (neg.unsqueeze(-1) == banned).any(-1)
            neg = torch.where(clash, draw(), neg)
        return neg

    def _pool(self, hidden: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Mean over positions ([B, H]); official: over all L positions, pads included."""
        if self.pool_include_padding:
            return hidden.mean(1)
        real = (x != 0).unsqueeze(-1).float()
        return (hidden * real).sum(1) / real.sum(1).clamp(min=1)

    def _flatten(self, hidden: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Instance-CL 'concatenate' representation, [B, L*H]."""
        if not self.pool_include_padding:
            hidden = hidden * (x != 0).unsqueeze(-1)
        return hidden.flatten(1)

    # ------------------------------------------------------------------ losses
    def rec_loss(self, hidden, pos, neg, item_emb) -> torch.Tensor:
        """BCE with one negative per supervised position (official), or full-softmax CE."""
        real = pos > 0
        if self.loss_type == "CE":
            logits = hidden[real] @ item_emb.T
            return F.cross_entropy(logits, pos[real]) if real.any() else logits.sum()
        pos_logit = (hidden * item_emb[pos]).sum(-1)
        neg_logit = (hidden * item_emb[neg]).sum(-1)
        loss = -torch.log(torch.sigmoid(pos_logit) + 1e-24) - torch.log(
            1 - torch.sigmoid(neg_logit) + 1e-24
        )
        return (loss * real).sum() / real.sum().clamp(min=1)

    @staticmethod
    def cluster_loss(query: torch.Tensor, centers: torch.Tensor, weight: float):
        """ELCRec clustering: (loss, assignment); D = squared distances query-centre."""
        query_sq = (query**2).sum(1, keepdim=True)
        center_sq = (centers**2).sum(1)
        dist = query_sq + center_sq.unsqueeze(0) - 2 * query @ centers.T  # [B, K]
        center_dist = center_sq.unsqueeze(1) + center_sq.unsqueeze(0) - 2 * centers @ centers.T
        # NOTE: the official "off-diagonal" line is a no-op; the K x K mean keeps the diagonal
        loss = weight * (dist.mean() - center_dist.mean())
        return loss, dist.detach().argmin(1)

    def _cluster_step(self, expert: ADARecExpert, raw: torch.Tensor, x: torch.Tensor):
        """Renormalises C, assigns the detached pooled raw outputs, returns (L_clu, ids)."""
        with torch.no_grad():  # official: C.data renormalised every step, outside autograd
            expert.cluster_centers.data = F.normalize(expert.cluster_centers.data, dim=1)
        query = F.normalize(self._pool(raw.detach(), x), dim=1)
        return self.cluster_loss(query, expert.cluster_centers, self.cluster_weight)

    def _expert_losses(self, name, x, seq_len, pos, neg, views, view_len) -> list[torch.Tensor]:
        expert = self.expert(name)
        n_sets = 1 if self.share_cl_forward else 2
        use_cl = self.instance_cl_weight > 0 or self.intent_cl_weight > 0
        raw, ada, mix, view_out = expert.train_pass(
            x, seq_len, views, view_len, n_sets if use_cl else 0,
            chunk_rows=self.encode_chunk_rows if self.padding_free else None,
        )
        item_emb = expert.item_embedding.weight
        rec = self.rec_loss(raw, pos, neg, item_emb)
        rec_ada = self.rec_loss(ada, pos, neg, item_emb)
        real = (x != 0).float()
        deno = (((ada - raw.detach()) ** 2).sum(-1) * real).sum() / real.sum().clamp(min=1)
        expl = exploration_loss(mix)
        cluster, assign = self._cluster_step(expert, raw, x)
        zero = rec.new_zeros(())
        inst = intent = zero
        if use_cl:
            batch = x.size(0)
            inst_out, intent_out = view_out[0], view_out[-1]
            flat = self._flatten(inst_out, views)
            inst = nce_loss(
                flat[:batch], flat[batch:], self.cl_temperature, similarity=self.cl_similarity
            )
            intents = expert.cluster_centers[assign]
            pooled = self._pool(intent_out, views)
            intent = 0.5 * (
                nce_loss(pooled[:batch], intents, self.cl_temperature, assign,
                         similarity=self.cl_similarity)
                + nce_loss(pooled[batch:], intents, self.cl_temperature, assign,
                           similarity=self.cl_similarity)
            )
        return [
            rec,
            self.aug_weight * rec_ada,
            self.deno_weight * deno,
            self.expl_weight * expl,
            self.instance_cl_weight * inst,
            self.intent_cl_weight * intent,
            cluster,
        ]

    def calculate_loss(self, interaction) -> tuple[torch.Tensor, ...]:
        x, seq_len = self._inputs(interaction, cut=self.padding_free)
        pos = self._targets(x, interaction[self.POS_ITEM_ID])
        neg = self._negatives(x, pos) if self.loss_type == "BCE" else None
        # one pair of views per row, shared by both experts (as officially)
        views = random_views(
            torch.cat([x, x]), self.crop_ratio, self.mask_ratio, self.reorder_ratio,
            full_width=self.internal_len,
        )
        view_len = (views != 0).sum(1)
        totals = None
        for name in self.active_experts():
            parts = self._expert_losses(name, x, seq_len, pos, neg, views, view_len)
            totals = parts if totals is None else [t + p for t, p in zip(totals, parts)]
        if totals is None:
            raise RuntimeError("ADARec: both experts are frozen; nothing left to train")
        return tuple(totals)

    # ------------------------------------------------------------------ inference
    def cluster_queries(self, interaction) -> dict[str, torch.Tensor]:
        """Normalised mean-pooled raw outputs per expert (k-means input), {name: [B, H]}."""
        x, seq_len = self._inputs(interaction, cut=self.padding_free)
        return {
            name: F.normalize(self._pool(self.expert(name)(x, seq_len)[0], x), dim=1)
            for name in EXPERT_NAMES
        }

    def _score_experts(self, interaction) -> list[tuple[torch.Tensor, torch.Tensor]]:
        x, seq_len = self._inputs(interaction, cut=True)  # only the last column is read
        names = EXPERT_NAMES if self.eval_expert == "fused" else (self.eval_expert,)
        out = []
        for name in names:
            expert = self.expert(name)
            out.append((expert(x, seq_len)[0][:, -1], expert.item_embedding.weight))
        return out

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """Eval-mode representations [E, B, H] of the experts ``eval_expert`` selects."""
        interaction = {self.ITEM_SEQ: item_seq, self.ITEM_SEQ_LEN: item_seq_len}
        return torch.stack([h for h, _ in self._score_experts(interaction)])

    def full_sort_predict(self, interaction) -> torch.Tensor:
        parts = self._score_experts(interaction)
        scores = sum(h @ emb.T for h, emb in parts) / len(parts)  # [B, N]
        if self.mask_history_in_eval:
            scores = scores.scatter(1, interaction[self.ITEM_SEQ], float("-inf"))
        return scores

    def predict(self, interaction) -> torch.Tensor:
        item = interaction[self.ITEM_ID]
        parts = self._score_experts(interaction)
        return sum((h * emb[item]).sum(-1) for h, emb in parts) / len(parts)  # [B]


# ----------------------------------------------------------------------------- data
class ADARecDataset(CDSRDataset):
    """CDSRDataset that, with ``train_sampling: last``, keeps one train row per user: the
    last prefix (history ``s[:-3]``, target ``s_{n-2}``), as the official training rows."""

    def build(self) -> list:
        datasets = super().build()
        mode = check_choice(self.config, "train_sampling", TRAIN_SAMPLINGS, "ADARec")
        if mode == "last":
            train = datasets[0]
            users = train.inter_feat[train.uid_field]
            last = sequence_rows(users)
            logger.info(
                "%s: train_sampling=last keeps %d of %d train rows (one per user)",
                self.dataset_name, len(last), len(users),
            )
            train.inter_feat = train.inter_feat[last]
        return datasets


# ----------------------------------------------------------------------------- trainer
class ADARecTrainer(CDSRTrainer):
    """CDSRTrainer with k-means centre initialisation before epoch 0 and, with
    ``per_expert_early_stop``, one early stopper per expert (official DualExpertTrainer).

    Per-expert mode: every ``eval_step`` epochs each active expert is validated alone; an
    expert whose ``valid_metric`` has not strictly improved for ``stopping_step``
    validations is frozen; training ends when both are. The checkpoint holds each expert's
    best snapshot, so ``evaluate(load_best_model=True)`` tests the fused per-expert-best
    model; the returned valid result is that model's fused validation.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.per_expert_early_stop = config["per_expert_early_stop"]
        self.kmeans_iters = config["kmeans_iters"]
        self._snapshots: dict[str, dict] = {}

    @torch.no_grad()
    def init_cluster_centers(self, train_data) -> None:
        """Sets every expert's centres to k-means of its eval-mode cluster queries."""
        self.model.eval()
        queries = {name: [] for name in EXPERT_NAMES}
        for interaction in train_data:
            for name, query in self.model.cluster_queries(interaction.to(self.device)).items():
                queries[name].append(query.cpu())
        for i, name in enumerate(EXPERT_NAMES):
            centers = self.model.expert(name).cluster_centers
            found = kmeans_centroids(
                torch.cat(queries[name]), len(centers), self.kmeans_iters, self.config["seed"] + i
            )
            centers.data.copy_(F.normalize(found, dim=1).to(centers.device))
        self.logger.info("ADARec: cluster centres initialised by k-means")

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False,
            callback_fn=None):
        if self.start_epoch == 0 and self.model.cluster_init == "kmeans":
            self.init_cluster_centers(train_data)
        if not (self.per_expert_early_stop and valid_data and self.eval_step > 0):
            return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        return self._fit_per_expert(
            train_data, valid_data, verbose, saved, show_progress, callback_fn
        )

    def _valid_epoch(self, valid_data, show_progress=False, expert=None):
        default = self.model.eval_expert
        self.model.eval_expert = expert or default
        try:
            return super()._valid_epoch(valid_data, show_progress=show_progress)
        finally:
            self.model.eval_expert = default

    def _improved(self, score, best) -> bool:
        if best is None:
            return True
        return score > best if self.valid_metric_bigger else score < best  # official: strict

    def _fit_per_expert(self, train_data, valid_data, verbose, saved, show_progress, callback_fn):
        self.eval_collector.data_collect(train_data)
        best = {name: None for name in EXPERT_NAMES}
        patience = {name: 0 for name in EXPERT_NAMES}
        epoch_idx = self.start_epoch - 1
        for epoch_idx in range(self.start_epoch, self.epochs):
            start = time()
            train_loss = self._train_epoch(train_data, epoch_idx, show_progress=show_progress)
            self.train_loss_dict[epoch_idx] = (
                sum(train_loss) if isinstance(train_loss, tuple) else train_loss
            )
            if verbose:
                self.logger.info(
                    self._generate_train_loss_output(epoch_idx, start, time(), train_loss)
                )
            self._add_train_loss_to_tensorboard(epoch_idx, train_loss)
            if (epoch_idx + 1) % self.eval_step:
                continue
            start, scores, improved = time(), {}, False
            for name in self.model.active_experts():
                scores[name], result = self._valid_epoch(valid_data, show_progress, expert=name)
                if self._improved(scores[name], best[name]):
                    best[name], patience[name], improved = scores[name], 0, True
                    self._snapshots[name] = self.model.expert_state(name)
                else:
                    patience[name] += 1
                    if patience[name] >= self.stopping_step:
                        self.model.set_expert_active(name, False)
                        self.logger.info(f"ADARec: expert {name} stopped at epoch {epoch_idx}")
                if verbose:
                    self.logger.info(
                        set_color(f"epoch {epoch_idx} expert {name} valid", "green")
                        + f" [time: {time() - start:.2f}s, score: {scores[name]:f}]\n"
                        + dict2str(result)
                    )
            self.best_valid_score = float(np.mean([b for b in best.values() if b is not None]))
            if improved and saved:
                self._save_checkpoint(epoch_idx, verbose=verbose)
            if callback_fn:  # the valid curve records the mean of the experts' scores
                callback_fn(epoch_idx, float(np.mean(list(scores.values()))))
            if not self.model.active_experts():
                self.logger.info(f"ADARec: both experts stopped; best {best}")
                break
        # the selected model: each expert's best-valid snapshot, fused
        for name in EXPERT_NAMES:
            self.model.set_expert_active(name, True)
        if self._snapshots:
            self.model.load_state_dict(
                {
                    **self.model.state_dict(),
                    **{k: v for snap in self._snapshots.values() for k, v in snap.items()},
                }
            )
        self.best_valid_score, self.best_valid_result = self._valid_epoch(valid_data, show_progress)
        if verbose:
            self.logger.info(
                set_color("fused per-expert-best valid", "blue")
                + ":\n"
                + dict2str(self.best_valid_result)
            )
        if saved:
            self._save_checkpoint(epoch_idx, verbose=verbose)
        self._add_hparam_to_tensorboard(self.best_valid_score)
        return self.best_valid_score, self.best_valid_result

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        state_dict = self.model.state_dict()
        for snapshot in self._snapshots.values():
            state_dict = {**state_dict, **snapshot}
        save_checkpoint(self.checkpoint_state(epoch, state_dict), saved_model_file)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")
