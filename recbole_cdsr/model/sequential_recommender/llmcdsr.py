"""LLMCDSR: LLM-generated cross-domain interactions, CT pre-training and meta recall.

Paper: Haoran Xin, Ying Sun, Chao Wang, Hui Xiong. "LLMCDSR: Enhancing Cross-Domain
Sequential Recommendation with Large Language Models." ACM TOIS 43(5), 2025.
DOI 10.1145/3715099.
Code:  github.com/xhran2010/LLMCDSR @ 5825e99 (model.py Selector/SASRec, trainer.py,
pre-train/, generation/). Spec: shared/specs/llmcdsr.md.

The offline stages (generation, parsing, text embedding, collaborative-textual
pre-training) live in ``llmcdsr_stages.py``; this module holds the model (SASRec backbone +
Relevance-aware Meta Recall Network, RMRN) and its trainer (meta step + main step).

Differences from the official code:
1. Backbone is RecBole's SASRec (post-LN blocks, FC feed-forward, right padding), not the
   pmixer variant; with ``aug_weight: 0`` and ``meta_interval: 0`` LLMCDSR is RecBole's
   SASRec (``loss_type: CE``) or SASRec with one domain-aware BCE negative (``BCE``).
2. Main rows are RecBole's prefix rows (last position only, 351,104 rows on food_kitchen),
   not 128 user sequences with all-position loss; augmented and meta rows keep the
   all-position loss. Hence the defaults ``aug_batch_size: 5`` per batch and a meta step
   every ``meta_interval: 7`` x ``meta_interval_unit: 128`` rows (spec 7.3 batch-ratio
   caveat; counted in rows so that a larger batch keeps the meta-step count). The main
   and shadow losses are one mean over real and generated positions as in the official
   code (``aug_loss_form: mean``); ``weighted`` gives mean + aug_weight * mean.
3. Augmentation records are drawn uniformly at random per batch (global torch RNG), not
   from a separately shuffled loader.
4. The virtual step uses ``torch.func.functional_call`` (no ``higher``, no deepcopy).
   ``inner_optimizer: adam_fresh`` (default) reproduces the official behaviour, where the
   shadow Adam state never persists (spec P1) so every virtual step is a first Adam step
   theta - lr * g / (|g| + eps); ``sgd`` is the fixed, standard learning-to-reweight step.
5. Only the record's target-domain query is computed (the official code computes both and
   discards one); padding of generated titles uses explicit lengths, not "row sums to 0".
6. Generation uses our own prompt wording, left truncation and the model's chat template
   (spec P4); the parser keeps order and the last line (P3). Pre-training validation
   negatives are drawn once with a seed (P5). See llmcdsr_stages.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.sequential_recommender.sasrec import SASRec

from recbole_cdsr.model.sequential_recommender import llmcdsr_stages as stages
from recbole_cdsr.trainer import CDSRTrainer
from recbole_cdsr.utils import check_choice

logger = logging.getLogger(__name__)

LOSS_TYPES = ("BCE", "CE")
INNER_OPTIMIZERS = ("adam_fresh", "sgd")
AUG_LOSS_FORMS = ("mean", "weighted")
POOLER_INITS = ("zero", "xavier")
RECALL_BACKENDS = ("torch", "faiss")


class _SASRecConfig:
    """Read-only view of the config that shows RecBole's SASRec ``loss_type: CE`` (SASRec
    rejects BCE; LLMCDSR implements BCE itself)."""

    def __init__(self, config):
        self._config = config

    def __getitem__(self, key):
        return "CE" if key == "loss_type" else self._config[key]

    def __contains__(self, key):
        return key in self._config


@dataclass
class AugBatch:
    """Augmented sequences of sampled generation records (all-position inputs)."""

    query: torch.Tensor    # [b, H] RMRN query q (differentiable w.r.t. the pooler)
    recalled: torch.Tensor  # [b, k] recalled internal item ids
    x: torch.Tensor        # [b, L] inputs (right-padded)
    x_len: torch.Tensor    # [b]
    y: torch.Tensor        # [b, L] next-item targets (0 where masked)
    pseudo_x: torch.Tensor  # [b, L] input position holds a recalled item
    seq: torch.Tensor      # [b, L + 1] full augmented sequence (negatives avoid it)


def relevance_pool(z: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """RMRN pooling: a_j = w . z_j (padding masked), alpha = softmax(a), q = sum_j alpha_j z_j.

    z [b, n, H] projected generated titles, mask [b, n], weight [b, H] -> q [b, H].
    """
    score = (z * weight.unsqueeze(1)).sum(-1).masked_fill(~mask, -1e9)
    alpha = torch.softmax(score, dim=1)
    return (alpha.unsqueeze(-1) * z).sum(1)


class LLMCDSR(SASRec):
    """SASRec trained on real rows plus single-domain users' sequences augmented with
    items recalled from LLM-generated other-domain titles; the recall pooler (phi) is
    meta-learned on overlapped users.

    Batch fields: item_id_list, item_length, item_id (RecBole sequential rows).
    calculate_loss returns (rec_loss, aug_loss), each already weighted.
    """

    loss_names = ("rec", "aug")

    def __init__(self, config, dataset):
        super().__init__(_SASRecConfig(config), dataset)
        self.loss_type = check_choice(config, "loss_type", LOSS_TYPES, "LLMCDSR")
        self.inner_optimizer = check_choice(config, "inner_optimizer", INNER_OPTIMIZERS, "LLMCDSR")
        pooler_init = check_choice(config, "pooler_init", POOLER_INITS, "LLMCDSR")
        self.recall_backend = check_choice(config, "recall_backend", RECALL_BACKENDS, "LLMCDSR")
        self.recall_k = config["recall_k"]
        self.aug_batch_size = config["aug_batch_size"]
        self.aug_weight = config["aug_weight"]
        self.aug_loss_form = check_choice(config, "aug_loss_form", AUG_LOSS_FORMS, "LLMCDSR")
        self.meta_batch_size = config["meta_batch_size"]
        self.shadow_lr = config["shadow_lr"]
        self.shadow_eps = config["shadow_eps"]
        for key in ("recall_k", "meta_batch_size"):
            if not isinstance(config[key], int) or config[key] < 1:
                raise ValueError(f"LLMCDSR: {key} must be a positive int, got {config[key]!r}")
        if not isinstance(self.aug_batch_size, int) or self.aug_batch_size < 0:
            raise ValueError(
                f"LLMCDSR: aug_batch_size must be an int >= 0, got {self.aug_batch_size!r}")

        # phi: one Linear(H -> 1) scorer per target domain (Selector), Eq. "a_j = w_t . z_j"
        self.pooler = nn.ModuleList(nn.Linear(self.hidden_size, 1, bias=False) for _ in range(2))
        for lin in self.pooler:
            if pooler_init == "zero":
                nn.init.zeros_(lin.weight)
            else:
                nn.init.xavier_normal_(lin.weight)

        item_domain = dataset.item_domain.clone()
        self.register_buffer("item_domain", item_domain, persistent=False)
        pools = [torch.nonzero(item_domain == d).flatten() for d in range(dataset.n_domains)]
        width = max(len(p) for p in pools)
        self.register_buffer("domain_pool", torch.stack(
            [F.pad(p, (0, width - len(p))) for p in pools]), persistent=False)
        counts = torch.tensor([len(p) for p in pools])
        self.register_buffer("domain_count", counts, persistent=False)
        self._load_artefacts(stages.prepare_artefacts(config, dataset))

    # ------------------------------------------------------------------ artefacts
    def _load_artefacts(self, art: stages.Artefacts) -> None:
        view = art.view
        pre = art.pretrained
        dims = {p["C"].shape[1] for p in pre}
        if dims != {self.hidden_size}:
            raise ValueError(
                f"LLMCDSR: pre-trained C has width {dims}, hidden_size is {self.hidden_size}; "
                f"delete the stale ctcp-*.pt in {art.paths['cache']}")
        # recall targets: unit-norm pre-trained CF embeddings of both domains
        self.register_buffer("recall_emb", F.normalize(torch.cat([p["C"] for p in pre]), dim=1),
                             persistent=False)
        self.register_buffer("recall_items", torch.cat([p["items"] for p in pre]), persistent=False)
        self.register_buffer("recall_dom", torch.cat(
            [torch.full((len(p["items"]),), d) for d, p in enumerate(pre)]), persistent=False)
        self._faiss = self.build_faiss() if self.recall_backend == "faiss" else None

        # generation records: target domain, the user's training sequence, Z = W_t g_j
        n = len(art.record_rows)
        counts = np.diff(art.record_offsets)
        n_max = int(counts.max()) if n else 1
        z = torch.zeros(n, n_max, self.hidden_size)
        mask = torch.arange(n_max).unsqueeze(0) < torch.as_tensor(counts).unsqueeze(1)
        tgt = torch.as_tensor(1 - art.record_src)
        if n:
            emb = torch.as_tensor(art.record_emb, dtype=torch.float32)
            owner = torch.repeat_interleave(torch.arange(n), torch.as_tensor(counts))
            slot = torch.arange(len(emb)) - torch.as_tensor(art.record_offsets[:-1])[owner]
            for d in range(2):
                sel = tgt[owner] == d
                z[owner[sel], slot[sel]] = emb[sel] @ pre[d]["W"].t()
        self.register_buffer("rec_z", z, persistent=False)
        self.register_buffer("rec_mask", mask, persistent=False)
        self.register_buffer("rec_tgt", tgt, persistent=False)
        seqs, lens = torch.as_tensor(view.seqs), torch.as_tensor(view.lens)
        rows = torch.as_tensor(art.record_rows)
        self.register_buffer("rec_seq", seqs[rows], persistent=False)
        self.register_buffer("rec_len", lens[rows], persistent=False)
        # meta users: overlapped (mixed-domain) training users with >= 2 items
        meta = torch.as_tensor((view.src_domain < 0) & (view.lens >= 2))
        self.register_buffer("meta_seq", seqs[meta], persistent=False)
        self.register_buffer("meta_len", lens[meta], persistent=False)
        logger.info(
            "LLMCDSR: %d generation records (%d titles), %d meta users, recall over %s items",
            n, int(counts.sum()), int(meta.sum()),
            [int((self.recall_dom == d).sum()) for d in range(2)])
        if n == 0:
            logger.warning("LLMCDSR: no generation records; augmentation and meta steps are off")

    def build_faiss(self) -> list:
        """One exact inner-product faiss index per domain over the unit-norm C_X."""
        import faiss

        indexes = []
        for d in range(2):
            index = faiss.IndexFlatIP(self.hidden_size)
            index.add(self.recall_emb[self.recall_dom == d].cpu().numpy().astype(np.float32))
            indexes.append(index)
        return indexes

    @property
    def n_records(self) -> int:
        return len(self.rec_tgt)

    @property
    def meta_enabled(self) -> bool:
        return self.n_records > 0 and len(self.meta_len) > 0 and self.aug_batch_size > 0

    def meta_parameters(self) -> list[nn.Parameter]:
        return list(self.pooler.parameters())

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("pooler.")]

    # ------------------------------------------------------------------ backbone
    def forward(self, item_seq, item_seq_len, input_emb=None, all_positions=False):
        """SASRec encoder; ``input_emb`` [B, L, H] replaces the item embeddings (the
        straight-through inputs of the meta step). Returns [B, H] or [B, L, H]."""
        position_ids = torch.arange(item_seq.size(1), dtype=torch.long, device=item_seq.device)
        item_emb = self.item_embedding(item_seq) if input_emb is None else input_emb
        hidden = self.dropout(self.LayerNorm(item_emb + self.position_embedding(position_ids)))
        attention_mask = self.get_attention_mask(item_seq)
        output = self.trm_encoder(hidden, attention_mask, output_all_encoded_layers=True)[-1]
        if all_positions:
            return output
        return self.gather_indexes(output, item_seq_len - 1)

    def _encode(self, params, *args, **kwargs):
        if params is None:
            return self(*args, **kwargs)
        return torch.func.functional_call(self, params, args, kwargs)

    def _item_weight(self, params) -> torch.Tensor:
        return self.item_embedding.weight if params is None else params["item_embedding.weight"]

    # ------------------------------------------------------------------ sampling
    def negatives(self, targets: torch.Tensor, exclude: torch.Tensor, tries: int = 5):
        """One negative per target from the target's domain, not in its row of ``exclude``
        [B, T] (redrawn up to ``tries`` times). ``targets`` [B, ...]; pad targets get pad."""
        dom = self.item_domain[targets].clamp(min=0)

        def draw(d):
            idx = (torch.rand(d.shape, device=d.device) * self.domain_count[d]).long()
            return self.domain_pool[d, idx]

        neg = draw(dom)
        flat_excl = exclude.view(exclude.shape[0], 1, -1)
        for _ in range(tries):
            hit = (neg.view(neg.shape[0], -1, 1) == flat_excl).any(-1).view(neg.shape)
            if not hit.any():
                break
            neg = torch.where(hit, draw(dom), neg)
        return neg.masked_fill(targets == 0, 0)

    def recall(self, rec_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RMRN forward: relevance-pooled query and its top-k target-domain items.

        Returns (q [b, H], recalled internal item ids [b, k]); q carries the gradient to
        the pooler, the ids do not (top-k is not differentiable).
        """
        tgt = self.rec_tgt[rec_idx]
        weight = torch.cat([lin.weight for lin in self.pooler])[tgt]  # [b, H]
        query = relevance_pool(self.rec_z[rec_idx], self.rec_mask[rec_idx], weight)
        with torch.no_grad():
            unit = F.normalize(query, dim=1)
            if self._faiss is not None:
                top = torch.empty(len(query), self.recall_k, dtype=torch.long, device=query.device)
                for d in range(2):
                    sel = torch.nonzero(tgt == d).flatten()
                    if len(sel):
                        _, found = self._faiss[d].search(
                            unit[sel].cpu().numpy().astype(np.float32), self.recall_k)
                        offset = int((self.recall_dom < d).sum())
                        top[sel] = torch.as_tensor(found, device=query.device) + offset
            else:
                sim = unit @ self.recall_emb.t()
                other = self.recall_dom.unsqueeze(0) != tgt.unsqueeze(1)
                sim = sim.masked_fill(other, float("-inf"))
                top = sim.topk(self.recall_k, dim=1).indices
        return query, self.recall_items[top]

    def insert(self, seq: torch.Tensor, seq_len: torch.Tensor, recalled: torch.Tensor):
        """Inserts each recalled id before a uniformly drawn position of its sequence (ids
        drawn for the same position keep their draw order; the last item stays last) and
        keeps the right-most ``max_seq_length + 1`` items.

        Returns (aug [b, L + 1] right-padded, aug_len [b], pseudo [b, L + 1]).
        """
        b, width = seq.shape
        k = recalled.shape[1]
        pos = (torch.rand(b, k, device=seq.device) * seq_len.unsqueeze(1)).long()
        orig_key = torch.arange(width, device=seq.device, dtype=torch.float).expand(b, width)
        orig_key = orig_key.masked_fill(orig_key >= seq_len.unsqueeze(1), float("inf"))
        ins_key = pos.float() - 1 + (torch.arange(k, device=seq.device) + 1).float() / (k + 1)
        order = torch.cat([orig_key, ins_key], 1).argsort(dim=1, stable=True)
        items = torch.cat([seq, recalled], 1).gather(1, order)
        flags = torch.cat([torch.zeros_like(seq, dtype=torch.bool),
                           torch.ones_like(recalled, dtype=torch.bool)], 1).gather(1, order)
        total = seq_len + k
        keep = self.max_seq_length + 1
        start = (total - keep).clamp(min=0)
        idx = start.unsqueeze(1) + torch.arange(keep, device=seq.device)
        valid = idx < total.unsqueeze(1)
        idx = idx.clamp(max=items.shape[1] - 1)
        aug = items.gather(1, idx).masked_fill(~valid, 0)
        pseudo = flags.gather(1, idx) & valid
        return aug, total.clamp(max=keep), pseudo

    def augment(self, rec_idx: torch.Tensor) -> AugBatch:
        query, recalled = self.recall(rec_idx)
        aug, aug_len, pseudo = self.insert(self.rec_seq[rec_idx], self.rec_len[rec_idx], recalled)
        x, y = aug[:, :-1], aug[:, 1:]
        # pseudo items are context only, never targets
        y = y.masked_fill(pseudo[:, 1:], 0)
        return AugBatch(query, recalled, x, aug_len - 1, y, pseudo[:, :-1], aug)

    def sample_records(self, n: int) -> torch.Tensor:
        return torch.randint(self.n_records, (n,), device=self.rec_tgt.device)

    # ------------------------------------------------------------------ losses
    def _scores_loss(self, hidden, targets, negs, params) -> torch.Tensor:
        """Per-position loss [P]: BCE with one negative, softplus(-s+) + softplus(s-)
        (its mean is the official sum of two means), or CE over all items.
        hidden [P, H], targets/negs [P]."""
        weight = self._item_weight(params)
        if self.loss_type == "CE":
            return F.cross_entropy(hidden @ weight.t(), targets, reduction="none")
        pos = (hidden * F.embedding(targets, weight)).sum(-1)
        neg = (hidden * F.embedding(negs, weight)).sum(-1)
        return F.softplus(-pos) + F.softplus(neg)

    def rows_loss(self, interaction, params=None, negs=None, reduce=True) -> torch.Tensor:
        """Loss of RecBole's rows (history -> target) at the last position: the mean, or
        the per-row vector [B] when ``reduce`` is False."""
        seq, seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        target = interaction[self.POS_ITEM_ID]
        if negs is None and self.loss_type == "BCE":
            negs = self.negatives(target, torch.cat([seq, target.unsqueeze(1)], 1))
        hidden = self._encode(params, seq, seq_len)
        loss = self._scores_loss(hidden, target, negs, params)
        return loss.mean() if reduce else loss

    def seq_loss(self, x, x_len, y, negs=None, exclude=None, params=None, input_emb=None,
                 reduce=True):
        """All-position loss of sequences x [B, L] with targets y [B, L] (0 = ignored):
        the mean (0 when no position has a target), or the vector [P] of the P positions
        with a target when ``reduce`` is False."""
        if negs is None and self.loss_type == "BCE":
            negs = self.negatives(y, exclude)
        hidden = self._encode(
            params, x, x_len.clamp(min=1), input_emb=input_emb, all_positions=True
        )
        valid = y > 0
        if not valid.any():
            empty = hidden.sum() * 0.0
            return empty if reduce else empty.view(1)[:0]
        negs = None if negs is None else negs[valid]
        loss = self._scores_loss(hidden[valid], y[valid], negs, params)
        return loss.mean() if reduce else loss

    def aug_loss(self, aug: AugBatch, negs=None, params=None, input_emb=None, reduce=True):
        return self.seq_loss(aug.x, aug.x_len, aug.y, negs, aug.seq, params, input_emb, reduce)

    def combine(self, rows: torch.Tensor, aug: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(real part, generated part) of the loss from per-position losses rows [B], aug [P].

        ``aug_loss_form: mean`` (official): one mean over real and generated positions,
        the generated ones weighted by ``aug_weight``: (sum rows + w sum aug) / (B + P), so
        the generated share follows the position counts. ``weighted``: mean(rows) +
        w mean(aug), a fixed share w / (1 + w) whatever the counts.
        """
        if self.aug_loss_form == "mean":
            n = rows.numel() + aug.numel()
            return rows.sum() / n, self.aug_weight * aug.sum() / n
        aug_part = aug.mean() if aug.numel() else aug.sum()
        return rows.mean(), self.aug_weight * aug_part

    def calculate_loss(self, interaction):
        if self.n_records == 0 or self.aug_batch_size == 0 or self.aug_weight == 0:
            rec_loss = self.rows_loss(interaction)
            return rec_loss, rec_loss.new_zeros(())
        rows = self.rows_loss(interaction, reduce=False)
        with torch.no_grad():
            aug = self.augment(self.sample_records(self.aug_batch_size))
        return self.combine(rows, self.aug_loss(aug, reduce=False))

    # ------------------------------------------------------------------ meta step
    def straight_through(self, aug: AugBatch, weight: torch.Tensor) -> torch.Tensor:
        """Noisy inputs X~: E[x] detached; at recalled positions the value is E[r] and the
        gradient flows to q as (1/k) sum_r dL/dE[r] (spec 3c step 5)."""
        base = F.embedding(aug.x, weight).detach()
        shift = (aug.query - aug.query.detach()) / self.recall_k
        return base + aug.pseudo_x.unsqueeze(-1).to(base.dtype) * shift.unsqueeze(1)

    def virtual_step(self, params: dict, loss: torch.Tensor) -> dict:
        """theta' = theta - lr * g (sgd) or the first Adam step theta - lr * g / (|g| + eps)
        with g = 0 entries left unchanged (adam_fresh, the official behaviour)."""
        names = list(params)
        grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=True,
                                    allow_unused=True)
        out = {}
        for name, grad in zip(names, grads):
            theta = params[name]
            if grad is None:
                out[name] = theta
            elif self.inner_optimizer == "sgd":
                out[name] = theta - self.shadow_lr * grad
            else:
                step = self.shadow_lr * grad / (grad.abs() + self.shadow_eps)
                out[name] = torch.where(grad == 0, theta, theta - step)
        return out

    def meta_inputs(self, interaction) -> dict:
        """Samples everything random of one meta step (records, insertions, negatives,
        meta users), so that :meth:`virtual_meta_loss` is a deterministic function."""
        aug = self.augment(self.sample_records(self.aug_batch_size))
        device = self.meta_len.device
        idx = torch.randint(len(self.meta_len), (self.meta_batch_size,), device=device)
        meta_seq, meta_len = self.meta_seq[idx], self.meta_len[idx]
        meta_x, meta_y = meta_seq[:, :-1], meta_seq[:, 1:]
        seq, target = interaction[self.ITEM_SEQ], interaction[self.POS_ITEM_ID]
        bce = self.loss_type == "BCE"
        return {
            "aug": aug,
            "rows_negs": (
                self.negatives(target, torch.cat([seq, target.unsqueeze(1)], 1)) if bce else None
            ),
            "aug_negs": self.negatives(aug.y, aug.seq) if bce else None,
            "meta": (meta_x, meta_len - 1, meta_y),
            "meta_negs": self.negatives(meta_y, meta_seq) if bce else None,
        }

    def virtual_meta_loss(self, interaction, inputs: dict, noisy: torch.Tensor) -> torch.Tensor:
        """L_meta(theta'(noisy)): shadow loss on [rows ; augmented rows with inputs
        ``noisy``], one virtual step, then the all-position loss of the meta users."""
        params = {n: p for n, p in self.named_parameters() if not n.startswith("pooler.")}
        shadow = sum(self.combine(
            self.rows_loss(interaction, params, inputs["rows_negs"], reduce=False),
            self.aug_loss(inputs["aug"], inputs["aug_negs"], params, input_emb=noisy,
                          reduce=False)))
        fast = self.virtual_step(params, shadow)
        meta_x, meta_len, meta_y = inputs["meta"]
        return self.seq_loss(meta_x, meta_len, meta_y, inputs["meta_negs"], params=fast)

    def meta_gradient(self, interaction) -> tuple[float, list[torch.Tensor]]:
        """One meta step's loss and gradient w.r.t. the pooler parameters (phi).

        Backbone ``.grad`` fields are not touched (``autograd.grad`` only).
        """
        inputs = self.meta_inputs(interaction)
        noisy = self.straight_through(inputs["aug"], self.item_embedding.weight)
        loss = self.virtual_meta_loss(interaction, inputs, noisy)
        phi = self.meta_parameters()
        grads = torch.autograd.grad(loss, phi, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(phi, grads)]
        return loss.item(), grads


class LLMCDSRTrainer(CDSRTrainer):
    """Per batch: the meta steps on phi (pooler) that are due, then the RecBole step on
    ``calculate_loss`` with an optimiser over the backbone only. A meta step is due every
    ``meta_interval * meta_interval_unit`` training rows (so the number of meta steps per
    epoch does not depend on ``train_batch_size``); ``meta_interval_unit: ~`` counts
    batches instead (a meta step every ``meta_interval`` batches, the former behaviour).
    ``per_domain_selection`` (official protocol) is CDSRTrainer's, for every model."""

    def __init__(self, config, model):
        self.adam_betas = tuple(config["adam_betas"])
        super().__init__(config, model)
        self.meta_interval = config["meta_interval"]
        if not isinstance(self.meta_interval, int) or self.meta_interval < 0:
            raise ValueError(
                f"LLMCDSR: meta_interval must be an int >= 0 (0 = no meta step), "
                f"got {self.meta_interval!r}")
        self.meta_interval_unit = config["meta_interval_unit"]
        if self.meta_interval_unit is not None and (
                not isinstance(self.meta_interval_unit, int) or self.meta_interval_unit < 1):
            raise ValueError(
                f"LLMCDSR: meta_interval_unit must be a positive int (training rows per "
                f"meta_interval count, e.g. 128) or ~ (count batches), "
                f"got {self.meta_interval_unit!r}")
        self.meta_optimizer = torch.optim.Adam(
            model.meta_parameters(), lr=config["meta_learning_rate"], betas=self.adam_betas)

    def _build_optimizer(self, **kwargs):
        params = kwargs.pop("params", self.model.backbone_parameters())
        learner = kwargs.pop("learner", self.learner)
        if learner.lower() == "adam":
            return torch.optim.Adam(
                params, lr=kwargs.pop("learning_rate", self.learning_rate),
                weight_decay=kwargs.pop("weight_decay", self.weight_decay), betas=self.adam_betas)
        return super()._build_optimizer(params=params, learner=learner, **kwargs)

    def meta_step(self, interaction) -> float:
        loss, grads = self.model.meta_gradient(interaction)
        self.meta_optimizer.zero_grad()
        for param, grad in zip(self.model.meta_parameters(), grads):
            param.grad = grad
        self.meta_optimizer.step()
        return loss

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        base = loss_func or self.model.calculate_loss
        state = {"seen": 0, "due": 0, "meta": []}
        use_meta = self.meta_interval > 0 and self.model.meta_enabled
        period = self.meta_interval * (self.meta_interval_unit or 1)

        def loss_with_meta(interaction):
            # due steps: multiples of `period` in [seen, seen + size), size = rows or 1 batch
            size = len(interaction) if self.meta_interval_unit else 1
            state["seen"] += size
            while use_meta and state["due"] < state["seen"]:
                state["meta"].append(self.meta_step(interaction))
                state["due"] += period
            return base(interaction)

        total = super()._train_epoch(train_data, epoch_idx, loss_with_meta, show_progress)
        if state["meta"]:
            logger.info("LLMCDSR epoch %d: %d meta steps, mean meta loss %.4f",
                        epoch_idx, len(state["meta"]), float(np.mean(state["meta"])))
        return total

