"""SyNCRec: cooperative single-domain (SDSR) and cross-domain (CDSR) sequential learning.

Paper: C. Park, T. Kim, H. Yoon, J. Hong, Y. Yu, M. Cho, M. Choi, J. Choo. "Pacer and
Runner: Cooperative Learning Framework between Single- and Cross-Domain Sequential
Recommendation." In SIGIR 2024, pp. 2071-2080. arXiv:2407.11245
Code:  github.com/cpark88/SyNCRec @ 2292eef (src/models.py, src/trainers.py)
Spec:  ../shared/specs/syncrec.md (section numbers below refer to it).

Differences from the official code (each a documented fix; the switches give the
official behaviour back where it matters):

1. Experts, gates and towers are independent modules (official: one shared object each,
   so the mixture collapses to one encoder, spec 6.1). ``share_experts: True`` restores
   the collapse (official-compat).
2. The K experts run as one batched computation over stacked weights (one GEMM per
   layer for a whole expert group) instead of (D+1)*K encoder calls; the stop-gradient
   halves of the mixture run under ``torch.no_grad`` (same gradients as the official
   ``.detach()``, no saved activations).
3. The gate is causal by default (``gate_input: causal``: per position, on the prefix
   mean of the task embedding). The official gate reads the whole flattened window, so
   with a loss at every position it sees the future (spec 6.19); ``gate_input: flatten``.
4. LC-NTG: the state s is a registered buffer (checkpointed, all-reduced over DDP ranks),
   updated under no_grad as a moving average s <- alpha*s + (1-alpha)*phi
   (``ntg_update: ema``; official: never-trained random U(-1,1) alpha/beta, spec
   6.2-6.3; ``ntg_update: sum`` gives s <- alpha*s + beta*phi, which collapses the
   weights to one-hot at alpha 0.9, beta 1.0); softmax is max-subtracted.
5. Gate noise is off in eval (official: always on, spec 6.8); ``gate_noise_eval: True``.
6. Domain ids come from the data (D = dataset.n_domains), not hard-coded 5..9 (spec 6.10).
7. Right padding (RecBole) instead of left padding; positions and the flattened gate
   layout differ accordingly. Pad embeddings follow RecBole's init (random rows that
   never train), as in the official code.
8. ``loss_type: CE`` (default, chosen by measured validation accuracy) scores every
   item of the target's domain with full-softmax cross-entropy; ``BCE`` is the official
   one-negative loss. SC-MIM divides by B * MAX_ITEM_LIST_LENGTH whatever width a batch
   is trimmed to (``scmim_mean``). The per-position BCE uses logsigmoid instead of
   log(sigmoid + 1e-24). Training
   negatives exclude the items of the row's window and targets (official: the user's
   whole sequence); evaluation uses the package's fixed candidate sets.
9. With ``trim_padding`` the rows of a batch run in length buckets, each cut to its
   longest row (exact for the causal gate), and the experts skip the SDSR inputs of rows
   that hold nothing of the task's domain, since every position of a row is computed
   for D+1 tasks and for K experts. On CPU, dropout masks come from a uniform draw (same
   distribution, ~3x cheaper than bernoulli_).
10. Model selection on the validation split (official: on test, spec 6.6); no unused
   ``mlm_output`` (spec 6.15).
"""

from __future__ import annotations

import logging
import math
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_cdsr.data.dataset import CDSRDataset, sequence_rows
from recbole_cdsr.model.layers import init_recbole_weights
from recbole_cdsr.utils import check_choice

logger = logging.getLogger(__name__)

TRAIN_MODES = ("full_sequence", "last_position")
TRAIN_WINDOWS = ("last", "all")
LOSS_TYPES = ("CE", "BCE")
CE_SCOPES = ("domain", "all")
NTG_UPDATES = ("ema", "sum")
SCMIM_MEANS = ("window", "targets")
GATE_INPUTS = ("causal", "flatten")
BUCKET_MIN_LENGTH = 8  # rows up to this length share the first length bucket (trim_padding)
ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}


def _dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    # Same distribution as F.dropout; on CPU a uniform draw + compare is ~3x faster than
    # bernoulli_, and dropout masks are the largest single cost of a CPU training step.
    if not training or p == 0.0:
        return x
    if x.is_cuda:
        return F.dropout(x, p, True)
    return x * ((torch.rand_like(x) >= p).to(x.dtype) * (1.0 / (1.0 - p)))


class SyNCRecDataset(CDSRDataset):
    """CDSRDataset whose train split holds whole sequences, not prefixes.

    With ``train_mode: full_sequence`` (official, spec 7) the model puts a loss at every
    position of a row, so the prefix rows are thinned (``data.dataset.sequence_rows``):
    ``train_windows: last`` (official) keeps each user's last row, i.e. their most recent
    ``MAX_ITEM_LIST_LENGTH`` targets; ``all`` keeps every ``MAX_ITEM_LIST_LENGTH``-th row
    from the end, so every target is trained once. ``last_position`` keeps every prefix.
    """

    def build(self) -> list:
        datasets = super().build()
        if self.config["train_mode"] != "full_sequence":
            return datasets
        windows = check_choice(self.config, "train_windows", TRAIN_WINDOWS, "SyNCRec")
        train = datasets[0]
        if self.uid_field is None or self.uid_field not in train.inter_feat:
            raise ValueError(
                f"SyNCRec: train_mode 'full_sequence' needs a user field in "
                f"{self.dataset_name}'s train interactions to keep one row per user; "
                f"load user_id or set train_mode: last_position"
            )
        users = train.inter_feat[self.uid_field]
        width = self.config["MAX_ITEM_LIST_LENGTH"] if windows == "all" else None
        keep = sequence_rows(users, width)
        logger.info(
            "%s: train_mode full_sequence, train_windows %s keeps %d of %d train rows",
            self.dataset_name, windows, len(keep), len(users),
        )
        train.inter_feat = train.inter_feat[keep]
        return datasets


class _StackedTransformer(nn.Module):
    """K post-LN Transformer encoders (RecBole's TransformerEncoder layer layout) with
    weights stacked on a leading expert axis; a group of experts runs as batched GEMMs.

    ``n_copies`` is K for independent experts or 1 for the official shared encoder.
    """

    def __init__(self, n_experts, n_copies, n_layers, hidden, n_heads, inner, hidden_dropout,
                 attn_dropout, act, eps, init_std):
        super().__init__()
        self.n_experts, self.n_heads, self.eps = n_experts, n_heads, eps
        self.hidden_dropout, self.attn_dropout = hidden_dropout, attn_dropout
        self.act = ACTIVATIONS[act]
        shapes = {
            "qkv_w": (hidden, 3 * hidden), "qkv_b": (3 * hidden,),
            "out_w": (hidden, hidden), "out_b": (hidden,),
            "ln1_w": (hidden,), "ln1_b": (hidden,),
            "ff1_w": (hidden, inner), "ff1_b": (inner,),
            "ff2_w": (inner, hidden), "ff2_b": (hidden,),
            "ln2_w": (hidden,), "ln2_b": (hidden,),
        }
        self.layers = nn.ModuleList()
        for _ in range(n_layers):
            layer = nn.ParameterDict()
            for name, shape in shapes.items():
                value = torch.zeros(n_copies, *shape)
                if name.endswith("_w") and not name.startswith("ln"):
                    value.normal_(0.0, init_std)
                elif name.startswith("ln") and name.endswith("_w"):
                    value.fill_(1.0)
                layer[name] = nn.Parameter(value)
            self.layers.append(layer)

    def _weight(self, param, experts: slice):
        if param.shape[0] != self.n_experts:  # shared (official-compat)
            param = param.expand(self.n_experts, *param.shape[1:])
        return param[experts]

    @staticmethod
    def _linear(x, weight, bias):
        # x [E, M, in] or shared [M, in]; weight [E, in, out] -> [E, M, out]
        if x.dim() == 2:
            n, d_in, d_out = weight.shape
            out = x @ weight.permute(1, 0, 2).reshape(d_in, n * d_out)
            return out.view(-1, n, d_out).transpose(0, 1) + bias.unsqueeze(1)
        return torch.baddbmm(bias.unsqueeze(1), x, weight)

    def _norm(self, x, weight, bias):
        return F.layer_norm(x, x.shape[-1:], eps=self.eps) * weight.unsqueeze(1) + bias.unsqueeze(1)

    @staticmethod
    def _attention(q, k, v, attn_mask, dropout):
        # q, k, v [E, P, B, heads, T, dh]; attn_mask [B, 1, T, T] additive
        if dropout > 0.0 and not q.is_cuda:
            scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5) + attn_mask
            return _dropout(scores.softmax(-1), dropout, True) @ v
        # 4-D inputs with a materialised mask take PyTorch's fused kernels
        shape = q.shape
        mask_shape = attn_mask.shape[-3:]
        mask = attn_mask.expand(*shape[:-3], *mask_shape).reshape(-1, *mask_shape)
        ctx = F.scaled_dot_product_attention(
            q.reshape(-1, *shape[-3:]), k.reshape(-1, *shape[-3:]), v.reshape(-1, *shape[-3:]),
            attn_mask=mask, dropout_p=dropout,
        )
        return ctx.view(shape)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, experts: slice) -> torch.Tensor:
        """x ``[P, B, T, H]`` (one input for every expert of the group), attn_mask
        ``[B, 1, T, T]`` additive; returns ``[E, P, B, T, H]`` for the E experts selected."""
        lead, (seq_len, hidden) = x.shape[:-2], x.shape[-2:]
        head_dim = hidden // self.n_heads
        dropout = self.hidden_dropout if self.training else 0.0
        attn_dropout = self.attn_dropout if self.training else 0.0
        h = x.reshape(-1, hidden)  # shared input of the first layer
        for layer in self.layers:
            w = {name: self._weight(p, experts) for name, p in layer.items()}
            qkv = self._linear(h, w["qkv_w"], w["qkv_b"])  # [E, M, 3H]
            n_exp = qkv.shape[0]
            qkv = qkv.view(n_exp, *lead, seq_len, 3, self.n_heads, head_dim)
            # one copy into [3, E, *lead, heads, T, dh] instead of one per matmul operand
            qkv = qkv.permute(-3, *range(qkv.dim() - 4), -2, -4, -1).contiguous()
            q, k, v = qkv.unbind(0)
            ctx = self._attention(q, k, v, attn_mask, attn_dropout)  # [E, *lead, heads, T, dh]
            ctx = ctx.transpose(-3, -2).reshape(n_exp, -1, hidden)
            attn = _dropout(self._linear(ctx, w["out_w"], w["out_b"]), dropout, self.training)
            h = self._norm(attn + h, w["ln1_w"], w["ln1_b"])
            ff = self.act(self._linear(h, w["ff1_w"], w["ff1_b"]))
            ff = self._linear(ff, w["ff2_w"], w["ff2_b"])
            h = self._norm(_dropout(ff, dropout, self.training) + h, w["ln2_w"], w["ln2_b"])
        return h.view(h.shape[0], *lead, seq_len, hidden)


class SyNCRec(SequentialRecommender):
    """ACMoE experts + per-task noisy gates and towers, LC-NTG loss weights, SC-MIM.

    Tasks: D single-domain tasks (SDSR, index d = domain d) and one cross-domain task
    (CDSR, index D); only CDSR scores items at inference. Experts ``0..K_s-1`` are the
    single experts, ``K_s..K-1`` the cross experts (K_c = floor(K * cross_expert_ratio)).

    Batch fields: item_id_list, item_length, item_id (domains come from the dataset's
    ``item_domain``). calculate_loss returns (single_loss, cross_loss, scmim_loss), each
    already weighted: ``loss_scale * L_single``, ``loss_scale * L_cross^lrb``,
    ``scmim_weight * L_MIM`` (spec 3.9).
    """

    input_type = InputType.POINTWISE
    loss_names = ("single", "cross", "scmim")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        # hyper-parameters (properties/model/SyNCRec.yaml)
        self.hidden_size = config["hidden_size"]
        self.n_layers = config["n_layers"]
        self.n_heads = config["n_heads"]
        self.inner_size = config["inner_size"]
        self.hidden_dropout_prob = config["hidden_dropout_prob"]
        self.attn_dropout_prob = config["attn_dropout_prob"]
        self.hidden_act = config["hidden_act"]
        self.layer_norm_eps = config["layer_norm_eps"]
        self.initializer_range = config["initializer_range"]
        self.n_experts = config["n_experts"]  # K
        self.cross_expert_ratio = config["cross_expert_ratio"]  # rho
        self.single_detach = config["single_detach"]
        self.cross_detach = config["cross_detach"]
        self.share_experts = config["share_experts"]
        self.gate_input = check_choice(config, "gate_input", GATE_INPUTS, "SyNCRec")
        self.gate_noise_eval = config["gate_noise_eval"]
        self.train_mode = check_choice(config, "train_mode", TRAIN_MODES, "SyNCRec")
        self.loss_type = check_choice(config, "loss_type", LOSS_TYPES, "SyNCRec")
        self.ce_scope = check_choice(config, "ce_scope", CE_SCOPES, "SyNCRec")
        self.use_ntg = config["use_ntg"]
        self.ntg_update = check_choice(config, "ntg_update", NTG_UPDATES, "SyNCRec")
        self.ntg_alpha = config["ntg_alpha"]  # alpha, spec 3.7
        self.ntg_beta = config["ntg_beta"]  # beta (ntg_update sum only)
        self.ntg_temperature = config["ntg_temperature"]  # tau
        self.use_scmim = config["use_scmim"]
        self.scmim_weight = config["scmim_weight"]
        self.scmim_mean = check_choice(config, "scmim_mean", SCMIM_MEANS, "SyNCRec")
        self.loss_scale = config["loss_scale"]
        self.trim_padding = config["trim_padding"]
        self._check_config(config)

        if not isinstance(getattr(dataset, "item_domain", None), torch.Tensor):
            raise TypeError(
                f"SyNCRec needs a CDSRDataset with item_domain; got {type(dataset).__name__}"
            )
        self.n_domains = dataset.n_domains  # D
        self.n_cross = int(math.floor(self.n_experts * self.cross_expert_ratio))  # K_c
        self.n_single = self.n_experts - self.n_cross  # K_s
        if not 1 <= self.n_cross < self.n_experts:
            raise ValueError(
                f"SyNCRec: n_experts={self.n_experts} and cross_expert_ratio="
                f"{self.cross_expert_ratio} give {self.n_cross} cross and {self.n_single} "
                f"single experts; both must be >= 1 (e.g. n_experts 5, ratio 0.8)"
            )
        if self.gate_input == "flatten" and self.train_mode == "full_sequence":
            logger.warning(
                "SyNCRec: gate_input 'flatten' with train_mode 'full_sequence' lets the "
                "gates see future items (official behaviour, spec 6.19)"
            )
        # item -> domain index 1..D, 0 for the padding item
        self.register_buffer("item_domain", dataset.item_domain.long() + 1, persistent=False)
        self.register_buffer("ntg_state", torch.full((self.n_domains,), 1.0 / self.n_domains))

        H, n_tasks = self.hidden_size, self.n_domains + 1
        self.item_embedding = nn.Embedding(self.n_items, H, padding_idx=0)
        self.domain_embedding = nn.Embedding(self.n_domains + 1, H, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_seq_length, H)
        self.LayerNorm = nn.LayerNorm(H, eps=self.layer_norm_eps)
        self.mip_norm = nn.Linear(H, H)  # W_m of SC-MIM

        copies = 1 if self.share_experts else self.n_experts
        self.experts = _StackedTransformer(
            self.n_experts, copies, self.n_layers, H, self.n_heads, self.inner_size,
            self.hidden_dropout_prob, self.attn_dropout_prob, self.hidden_act,
            self.layer_norm_eps, self.initializer_range,
        )
        # towers and gates: one per task (official-compat: one shared by all tasks)
        task_copies = 1 if self.share_experts else n_tasks
        gate_in = H if self.gate_input == "causal" else self.max_seq_length * H
        std = self.initializer_range
        self.tower_params = nn.ParameterDict({
            "ff1_w": nn.Parameter(torch.randn(task_copies, H, self.inner_size) * std),
            "ff1_b": nn.Parameter(torch.zeros(task_copies, self.inner_size)),
            "ff2_w": nn.Parameter(torch.randn(task_copies, self.inner_size, H) * std),
            "ff2_b": nn.Parameter(torch.zeros(task_copies, H)),
            "ln_w": nn.Parameter(torch.ones(task_copies, H)),
            "ln_b": nn.Parameter(torch.zeros(task_copies, H)),
        })
        # noisy partitioned gates (spec 3.4): clean (w) and noise (v) logits per partition
        self.gate_params = nn.ParameterDict({
            f"{kind}_{part}_{p}": nn.Parameter(
                torch.randn(task_copies, gate_in, n) * std if p == "w"
                else torch.zeros(task_copies, n)
            )
            for kind in ("clean", "noise")
            for part, n in (("single", self.n_single), ("cross", self.n_cross))
            for p in ("w", "b")
        })
        self.apply(self._init_weights)

    def _check_config(self, config) -> None:
        for key in ("single_detach", "cross_detach", "share_experts", "gate_noise_eval",
                    "use_ntg", "use_scmim", "trim_padding"):
            if not isinstance(config[key], bool):
                raise ValueError(f"SyNCRec: {key} must be True or False, got {config[key]!r}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"SyNCRec: hidden_act must be one of {tuple(ACTIVATIONS)}, got {self.hidden_act!r}"
            )
        if self.hidden_size % self.n_heads:
            raise ValueError(
                f"SyNCRec: hidden_size={self.hidden_size} must be divisible by "
                f"n_heads={self.n_heads}"
            )
        if not 0.0 < self.cross_expert_ratio < 1.0:
            raise ValueError(
                f"SyNCRec: cross_expert_ratio must be in (0, 1), got {self.cross_expert_ratio!r}"
            )
        if self.ntg_temperature is None or self.ntg_temperature <= 0:
            raise ValueError(f"SyNCRec: ntg_temperature must be > 0, got {self.ntg_temperature!r}")
        if self.ntg_update == "ema" and not 0.0 <= self.ntg_alpha < 1.0:
            raise ValueError(
                f"SyNCRec: ntg_alpha must be in [0, 1) with ntg_update 'ema' (s <- alpha*s + "
                f"(1-alpha)*phi), got {self.ntg_alpha!r}; e.g. ntg_alpha: 0.9"
            )

    def _init_weights(self, module):
        init_recbole_weights(module, self.initializer_range)

    # ----------------------------------------------------------------- building blocks
    def _task_param(self, param, tasks: slice):
        if param.shape[0] == 1 and self.share_experts:
            return param.expand(self.n_domains + 1, *param.shape[1:])[tasks]
        return param[tasks]

    def _embed(self, items, domains):
        # Eq. E = Dropout(LN(I[x] + M[delta] + P)), spec 3.1; items [..., B, T]
        positions = self.position_embedding.weight[: items.shape[-1]]
        emb = self.item_embedding(items) + self.domain_embedding(domains) + positions
        return _dropout(self.LayerNorm(emb), self.hidden_dropout_prob, self.training)

    def _gates(self, emb, tasks: slice):
        """Partitioned noisy gates (spec 3.4). emb ``[P, B, T, H]`` for the P tasks in
        ``tasks``; returns ``[P, B, T, K]`` mixture weights (per position)."""
        if self.gate_input == "causal":
            steps = torch.arange(1, emb.shape[-2] + 1, device=emb.device, dtype=emb.dtype)
            u = emb.cumsum(-2) / steps.unsqueeze(-1)  # prefix mean, [P, B, T, H]
        else:
            u = emb.flatten(-2).unsqueeze(-2)  # whole window, [P, B, 1, T*H]
        noisy = self.training or self.gate_noise_eval
        probs = []
        for part in ("single", "cross"):
            p = {f"{k}_{s}": self._task_param(self.gate_params[f"{k}_{part}_{s}"], tasks)
                 for k in ("clean", "noise") for s in ("w", "b")}
            logits = torch.einsum("pbti,pin->pbtn", u, p["clean_w"]) + p["clean_b"][:, None, None]
            if noisy:
                scale = F.softplus(
                    torch.einsum("pbti,pin->pbtn", u, p["noise_w"]) + p["noise_b"][:, None, None]
                ) + 1e-3
                logits = logits + torch.randn_like(logits) * scale
            probs.append(logits.softmax(-1))
        # SDSR gates put mass rho on the single partition, the CDSR gate on the cross one
        is_cdsr = torch.arange(self.n_domains + 1, device=emb.device)[tasks] == self.n_domains
        rho = self.cross_expert_ratio
        single_mass = torch.where(is_cdsr, 1.0 - rho, rho).to(emb.dtype)[:, None, None, None]
        gates = torch.cat([single_mass * probs[0], (1.0 - single_mass) * probs[1]], dim=-1)
        return gates.expand(-1, -1, emb.shape[-2], -1)

    def _towers(self, mixed, tasks: slice):
        # Y = LN(O + Dropout(W2 GELU(W1 O + b1) + b2)), spec 3.5; mixed [P, B, T, H]
        p = {k: self._task_param(v, tasks) for k, v in self.tower_params.items()}
        flat = mixed.reshape(mixed.shape[0], -1, mixed.shape[-1])
        act = ACTIVATIONS[self.hidden_act]
        hidden = act(torch.baddbmm(p["ff1_b"].unsqueeze(1), flat, p["ff1_w"]))
        out = torch.baddbmm(p["ff2_b"].unsqueeze(1), hidden, p["ff2_w"])
        out = _dropout(out, self.hidden_dropout_prob, self.training) + flat
        out = F.layer_norm(out, flat.shape[-1:], eps=self.layer_norm_eps)
        out = out * p["ln_w"].unsqueeze(1) + p["ln_b"].unsqueeze(1)
        return out.view_as(mixed)

    def _task_outputs(self, item_seq, with_sdsr: bool = True, return_experts: bool = False,
                      sdsr_rows=None):
        """Runs the tasks on ``item_seq`` [B, T].

        ``sdsr_rows`` (``[D, B]`` bool, optional): the (domain, row) pairs whose SDSR output
        is needed; the experts skip the others, whose outputs are then 0 (see
        ``_needed_sdsr_rows``). None runs every pair.

        Returns:
            (outputs, gates, expert_outputs): ``[P, B, T, H]`` task outputs Y, ``[P, B, T, K]``
            gate weights and (only with ``return_experts``, else None) ``[K, P, B, T, H]``
            expert outputs Z, where P = D + 1 tasks (SDSR 0..D-1, CDSR D) or P = 1 (CDSR
            only) when ``with_sdsr`` is False.
        """
        D, K_s = self.n_domains, self.n_single
        domain_seq = self.item_domain[item_seq]
        attn_mask = self.get_attention_mask(item_seq)  # [B, 1, T, T], from the full sequence
        cdsr_emb = self._embed(item_seq, domain_seq).unsqueeze(0)  # [1, B, T, H]
        single, cross = slice(0, K_s), slice(K_s, self.n_experts)
        if not with_sdsr:
            groups = [[self.experts(cdsr_emb, attn_mask, slice(0, self.n_experts))]]
            tasks, embs = slice(D, D + 1), [cdsr_emb]
        else:
            # SDSR input of domain d: other-domain positions become pad (masked, not compacted)
            domain_ids = torch.arange(1, D + 1, device=item_seq.device)[:, None, None]
            own = domain_seq.unsqueeze(0) == domain_ids
            sdsr_emb = self._embed(item_seq * own, domain_seq * own)  # [D, B, T, H]
            # asymmetric stop-gradient (spec 3.3): SDSR tasks do not train cross experts,
            # the CDSR task does not train single experts
            run_sdsr = self._sdsr_runner(sdsr_emb, attn_mask, sdsr_rows)
            single_own = run_sdsr(single)
            with torch.no_grad() if self.single_detach else nullcontext():
                single_other = self.experts(cdsr_emb, attn_mask, single)
            cross_own = self.experts(cdsr_emb, attn_mask, cross)
            with torch.no_grad() if self.cross_detach else nullcontext():
                cross_other = run_sdsr(cross)
            groups = [[single_own, cross_other], [single_other, cross_own]]  # SDSR, CDSR
            tasks, embs = slice(0, D + 1), [sdsr_emb, cdsr_emb]
        gates = self._gates(torch.cat(embs, dim=0), tasks)
        mixed, start = [], 0
        for parts in groups:  # O = sum_k g_k Z_k, per task group (no [K, P, B, T, H] copy)
            n_tasks = parts[0].shape[1]
            gate = gates[start : start + n_tasks]
            experts = [z for part in parts for z in part.unbind(0)]
            out = experts[0] * gate[..., 0:1]
            for k in range(1, len(experts)):
                out = torch.addcmul(out, experts[k], gate[..., k : k + 1])
            mixed.append(out)
            start += n_tasks
        mixed = torch.cat(mixed, dim=0) if len(mixed) > 1 else mixed[0]
        expert_outputs = None
        if return_experts:
            expert_outputs = torch.cat([torch.cat(parts, dim=0) for parts in groups], dim=1)
        return self._towers(mixed, tasks), gates, expert_outputs

    def _sdsr_runner(self, sdsr_emb, attn_mask, sdsr_rows):
        """Expert call on the SDSR inputs ``[D, B, T, H]``: all pairs, or only the pairs of
        ``sdsr_rows`` packed into one batch and put back (0 elsewhere)."""
        if sdsr_rows is None or bool(sdsr_rows.all()):
            return lambda experts: self.experts(sdsr_emb, attn_mask, experts)
        D, B = sdsr_rows.shape
        pick = sdsr_rows.flatten().nonzero().squeeze(1)  # index d * B + b
        packed = sdsr_emb.flatten(0, 1)[pick].unsqueeze(0)  # [1, M, T, H]
        mask = attn_mask[pick % B]

        def run(experts):
            z = self.experts(packed, mask, experts)[:, 0]  # [E, M, T, H]
            full = z.new_zeros(z.shape[0], D * B, *z.shape[2:]).index_copy(1, pick, z)
            return full.view(z.shape[0], D, B, *z.shape[2:])

        return run

    def _needed_sdsr_rows(self, item_seq, targets) -> torch.Tensor:
        """``[D, B]``: SDSR task d's output on row b is read only if the row holds an item
        of domain d (SC-MIM reads the SDSR output of each position's own domain) or a
        target of domain d (the SDSR loss of domain d); rows of other domains only are
        skipped (with ``trim_padding``)."""
        domains = torch.arange(1, self.n_domains + 1, device=item_seq.device)[:, None, None]
        in_row = torch.cat([self.item_domain[item_seq], self.item_domain[targets]], dim=1)
        return (in_row.unsqueeze(0) == domains).any(-1)

    # ----------------------------------------------------------------- recommender API
    def _trim(self, item_seq, item_seq_len):
        # Right padding: columns past the batch's longest row change no valid position
        # (causal attention, pad keys masked, per-position gate/tower). Not with the
        # flatten gate, whose input width is T*H.
        if self.trim_padding and self.gate_input == "causal":
            return item_seq[:, : int(item_seq_len.max())]
        return item_seq

    def _outputs(self, item_seq, item_seq_len, with_sdsr: bool, sdsr_rows=None) -> torch.Tensor:
        """Task outputs ``[P, B, T, H]``. With ``trim_padding`` the rows run in length
        buckets (lengths up to 8, 9-16, 17-32, ...), each bucket cut to its longest row,
        and the experts skip the SDSR pairs outside ``sdsr_rows``.

        Exact for every output a loss or a score reads (the same argument as ``_trim``):
        positions past a row's length, and skipped SDSR pairs, are 0 instead of outputs
        computed from padding. Histories are short next to the window (food_kitchen: mean
        6 of 50) and most users touch few domains, so this removes most of the padding
        work of a step.
        """
        if not self.trim_padding:
            return self._task_outputs(item_seq, with_sdsr)[0]
        if self.gate_input != "causal":
            return self._task_outputs(item_seq, with_sdsr, sdsr_rows=sdsr_rows)[0]
        width = item_seq.shape[1]
        lengths = item_seq_len.clamp(1, width)
        bucket = torch.log2((lengths.float() - 1.0).clamp_min(1.0) / BUCKET_MIN_LENGTH)
        bucket = bucket.floor().add(1).clamp_min(0).long()  # 0: <= 8, 1: 9-16, 2: 17-32 ...
        counts = torch.bincount(bucket).tolist()
        if sum(c > 0 for c in counts) == 1:
            return self._task_outputs(item_seq, with_sdsr, sdsr_rows=sdsr_rows)[0]
        order = torch.argsort(bucket, stable=True)
        parts, start = [], 0
        for count in counts:
            if count == 0:
                continue
            rows = order[start : start + count]
            start += count
            cut = int(lengths[rows].max())
            needed = None if sdsr_rows is None else sdsr_rows[:, rows]
            out = self._task_outputs(item_seq[rows, :cut], with_sdsr, sdsr_rows=needed)[0]
            parts.append(F.pad(out, (0, 0, 0, width - cut)))
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)
        return torch.cat(parts, dim=1)[:, inverse]

    def forward(self, item_seq, item_seq_len) -> torch.Tensor:
        """CDSR output at each row's last valid position, ``[B, H]``."""
        item_seq = self._trim(item_seq, item_seq_len)
        outputs = self._outputs(item_seq, item_seq_len, with_sdsr=False)
        return self.gather_indexes(outputs[0], item_seq_len - 1)

    def position_targets(self, item_seq, item_seq_len, target) -> torch.Tensor:
        """Next item at every position (``full_sequence``) or at the last one only
        (``last_position``); 0 where there is no target. ``[B, T]``."""
        if self.train_mode == "full_sequence":
            targets = F.pad(item_seq[:, 1:], (0, 1))
        else:
            targets = torch.zeros_like(item_seq)
        rows = torch.arange(len(item_seq), device=item_seq.device)
        targets[rows, item_seq_len - 1] = target
        return targets

    def _sample_negatives(self, item_seq, targets, rounds: int = 3) -> torch.Tensor:
        # one uniform negative per position, redrawn where it hits the row's items
        seen = torch.cat([item_seq, targets], dim=1)
        negatives = torch.randint(1, self.n_items, targets.shape, device=targets.device)
        for _ in range(rounds):
            clash = (negatives.unsqueeze(-1) == seen.unsqueeze(1)).any(-1)
            redraw = torch.randint(1, self.n_items, targets.shape, device=targets.device)
            negatives = torch.where(clash, redraw, negatives)
        return negatives

    def ntg_weights(self, gap: torch.Tensor) -> torch.Tensor:
        """LC-NTG (spec 3.7): in training s is updated with the gap phi, then
        w = softmax(s / tau).

        ``ntg_update: ema`` (default): s <- alpha*s + (1-alpha)*phi, a moving average that
        stays within the range of the gaps seen. ``sum`` (the earlier update, spec 3.7's
        formula with fixed scalars): s <- alpha*s + beta*phi settles at beta/(1-alpha)
        times the gap (10x at 0.9 / 1.0), so a gap of 0.5 already gives one-hot weights
        and the other domains' CDSR losses stop training.

        ``gap`` is phi ``[D]`` (detached); returns w ``[D]`` (no gradient)."""
        if not self.use_ntg:
            return torch.full_like(self.ntg_state, 1.0 / self.n_domains)
        with torch.no_grad():
            if self.training:
                gap = gap.detach().clone()
                if dist.is_available() and dist.is_initialized():
                    dist.all_reduce(gap)
                    gap /= dist.get_world_size()
                beta = 1.0 - self.ntg_alpha if self.ntg_update == "ema" else self.ntg_beta
                self.ntg_state.mul_(self.ntg_alpha).add_(beta * gap)
            return torch.softmax(self.ntg_state / self.ntg_temperature, dim=0)

    def domain_losses(self, outputs, targets, negatives):
        """Per-domain BCE sums and means of the SDSR and CDSR outputs (spec 3.6).

        Returns:
            (sdsr_sum, sdsr_mean, cdsr_sum, cdsr_mean), each ``[D]``; a domain with no
            target in the batch gives 0.
        """
        D = self.n_domains
        pos = (outputs * self.item_embedding(targets)).sum(-1)  # [D + 1, B, T]
        neg = (outputs * self.item_embedding(negatives)).sum(-1)
        bce = -F.logsigmoid(pos) - F.logsigmoid(-neg)
        domains = torch.arange(1, D + 1, device=targets.device)[:, None, None]
        in_domain = (self.item_domain[targets].unsqueeze(0) == domains).to(bce.dtype)  # [D, B, T]
        count = in_domain.sum((1, 2)).clamp_min(1.0)
        sdsr_sum = (bce[:D] * in_domain).sum((1, 2))  # SDSR d on domain-d targets
        cdsr_sum = (bce[D] * in_domain).sum((1, 2))
        return sdsr_sum, sdsr_sum / count, cdsr_sum, cdsr_sum / count

    def domain_losses_ce(self, outputs, targets):
        """Per-domain full-softmax cross-entropy sums and means (``loss_type: CE``).

        At each position with a target, the CDSR output and the SDSR output of the
        target's domain score all items (``ce_scope: all``) or the items of the target's
        domain (``domain``, the candidates evaluation ranks); the loss is the CE of the
        target. Only target positions are scored: ``[M, N]`` logits, M = targets in batch.

        Returns:
            (sdsr_sum, sdsr_mean, cdsr_sum, cdsr_mean), each ``[D]``, as ``domain_losses``.
        """
        D = self.n_domains
        rows, cols = targets.nonzero(as_tuple=True)
        target = targets[rows, cols]
        domain = self.item_domain[target] - 1  # [M], 0..D-1
        hidden = torch.stack([outputs[domain, rows, cols], outputs[D, rows, cols]])  # [2, M, H]
        logits = hidden @ self.item_embedding.weight.T  # [2, M, N]
        if self.ce_scope == "domain":
            other = self.item_domain.unsqueeze(0) != (domain + 1).unsqueeze(1)  # [M, N]
            logits = logits.masked_fill(other.unsqueeze(0), torch.finfo(logits.dtype).min)
        else:
            logits[..., 0] = torch.finfo(logits.dtype).min  # never the padding item
        ce = F.cross_entropy(logits.flatten(0, 1), target.repeat(2), reduction="none").view(2, -1)
        sums = ce.new_zeros(2, D).index_add_(1, domain, ce)
        count = torch.bincount(domain, minlength=D).to(ce.dtype).clamp_min(1.0)
        return sums[0], sums[0] / count, sums[1], sums[1] / count

    def scmim_loss(self, outputs, item_seq, targets, permutation=None) -> torch.Tensor:
        """SC-MIM as in the official code (spec 3.8): -log sig(sig(<q, Y^S>) - sig(<q, I[x_pi]>)),
        summed over the positions with a target and divided by B * MAX_ITEM_LIST_LENGTH
        (``scmim_mean: window``, the official denominator: padding counts, whatever width
        ``trim_padding`` cut the batch to) or by the number of target positions
        (``targets``). Either way the value does not depend on the trimmed width."""
        D = self.n_domains
        domain_seq = self.item_domain[item_seq]
        index = (domain_seq - 1).clamp_min(0)[None, :, :, None].expand(1, -1, -1, outputs.shape[-1])
        sdsr_now = outputs[:D].gather(0, index)[0] * (domain_seq > 0).unsqueeze(-1)
        query = self.mip_norm(outputs[D])
        if permutation is None:
            permutation = torch.randperm(len(item_seq), device=item_seq.device)
        pos = torch.sigmoid((query * sdsr_now).sum(-1))
        neg = torch.sigmoid((query * self.item_embedding(item_seq[permutation])).sum(-1))
        has_target = targets > 0
        per_position = -F.logsigmoid(pos - neg) * has_target
        if self.scmim_mean == "window":
            return per_position.sum() / (len(targets) * self.max_seq_length)
        return per_position.sum() / has_target.sum().clamp_min(1)

    def calculate_loss(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        item_seq = self._trim(item_seq, item_seq_len)
        targets = self.position_targets(item_seq, item_seq_len, interaction[self.POS_ITEM_ID])
        needed = self._needed_sdsr_rows(item_seq, targets) if self.trim_padding else None
        outputs = self._outputs(item_seq, item_seq_len, with_sdsr=True, sdsr_rows=needed)
        if self.loss_type == "CE":
            losses = self.domain_losses_ce(outputs, targets)
        else:
            negatives = self._sample_negatives(item_seq, targets)
            losses = self.domain_losses(outputs, targets, negatives)
        sdsr_sum, sdsr_mean, cdsr_sum, cdsr_mean = losses
        weights = self.ntg_weights(sdsr_mean.detach() - cdsr_mean.detach())  # phi_d
        single_loss = sdsr_sum.sum() / self.n_domains  # L_single
        cross_loss = (weights * cdsr_sum).sum()  # L_cross^lrb
        if self.use_scmim:
            mim = self.scmim_weight * self.scmim_loss(outputs, item_seq, targets)
        else:
            mim = outputs.new_zeros(())
        return self.loss_scale * single_loss, self.loss_scale * cross_loss, mim

    def predict(self, interaction) -> torch.Tensor:
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return (seq_output * self.item_embedding(interaction[self.ITEM_ID])).sum(-1)  # [B]

    def full_sort_predict(self, interaction) -> torch.Tensor:
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return seq_output @ self.item_embedding.weight.T  # [B, N]
