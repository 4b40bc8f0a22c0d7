"""Quality and speed of a sample set: GenPPL, MAUVE, entropy, BERTScore, throughput.

One call of :func:`evaluate_samples` reads a sample file written by ``diladiff
sample`` (JSONL plus its ``.meta.json`` timing record) and returns one
:class:`EvalRecord`, written as ``<stem>.eval.json`` beside the samples.

What is compared with what (fixed, and recorded in every record):

* **EOS policy** (``eval.eos``), applied identically to the samples and to the
  reference texts before anything is scored. A block is ``BOS, text..., EOS`` with
  EOS also separating the documents packed into it (MDLM's "wrap").

  - ``"strip"`` (default): every special token of the decoder's tokenizer (BOS,
    EOS, mask, ...) is removed and the remaining ids are decoded as one text:
    documents joined in a block are scored as one continuous text, and **text
    after the first EOS is kept** (so does MDLM's OWT evaluation). This is the
    ``text`` field ``diladiff sample`` writes.
  - ``"truncate"``: a leading BOS is dropped and the text **ends at the first
    EOS**; everything after it is discarded (any other special token inside is
    removed). A sample that starts with EOS becomes empty and scores 0 tokens.

* **GenPPL**: each text is re-tokenised with the scorer's own tokenizer (no
  special tokens added), prefixed with the scorer's BOS (else its EOS), and cut
  into windows of the scorer's context length C that overlap by one token, so
  that every text token is predicted exactly once, with at most C - 1 tokens of
  context (a text of at most C - 1 tokens is one window: the paper recipes score
  1024-token samples with gpt2-large in 1024-token chunks). The BOS itself is not
  scored and no EOS is appended. GenPPL = exp(sum of NLL / number of scored
  tokens) over the whole sample set (token-weighted, not a mean of per-sample
  perplexities).
* **Entropy**: per sample, the entropy (nats) of the unigram distribution of
  its decoder token ids that the EOS policy keeps; averaged over samples (an
  empty sample has entropy 0).
* **MAUVE** (mauve-text) between the samples and as many held-out reference
  texts: blocks of the prepared split (``valid``), drawn with a fixed seed; all
  blocks and samples have the same decoder-token length L (checked). Features:
  the package's own featuriser (``featurizer: mauve``: last-token state of the
  last layer, ``gpt2-large`` in the paper recipes), or a local encoder
  (``mean``: mean of the last hidden states over non-pad tokens; ``last``: the
  last non-pad token's state), passed as ``p_features``/``q_features``.
* The **floor**: the same GenPPL and entropy computed on the reference texts
  (what a perfect sampler would reach), and the scorer's own validation
  perplexity when the scorer is a judge trained by ``diladiff train-judge``.

Heavy optional libraries (mauve, bert_score, sklearn) are imported inside the
functions that need them: the GPU machines lack them and training does not
need them.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from diladiff_cli import hub
from diladiff_cli.checkpoint import atomic_write_text
from diladiff_cli.config.evaluation import EosPolicy, EvalConfig, Featurizer
from diladiff_cli.config.stages import MINILM
from diladiff_cli.config.train import Precision
from diladiff_cli.data import load_blocks, load_data_info
from diladiff_cli.errors import DiladiffError
from diladiff_cli.sample import meta_path
from diladiff_cli.train import Reporter, autocast

JUDGE_RECORD = "judge.json"  # written by `train-judge` into the judge directory


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Speed:
    """Throughput from a sample file's timing record.

    Attributes:
        forward_passes_discrete: decoder forward passes per batch (mean).
        forward_passes_latent: latent-network evaluations per batch (0 for MDLM).
        tokens_per_forward: sequence length / decoder forward passes.
        seconds_per_sample: wall time of sampling / number of samples.
        seconds_total: wall time of sampling (model loading excluded).
        latent_share: share of the wall time spent drawing latents.
        device: where the samples were drawn.
    """

    forward_passes_discrete: float
    forward_passes_latent: float
    tokens_per_forward: float
    seconds_per_sample: float
    seconds_total: float
    latent_share: float
    device: str


@dataclass(frozen=True)
class PerplexityResult:
    """GenPPL of a list of texts.

    Attributes:
        genppl: exp(nll_sum.sum() / num_tokens.sum()); NaN when no token was scored.
        mean_nll: the token-weighted mean NLL (nats).
        total_tokens: scored scorer tokens over all texts.
        nll_sum: ``(N,)`` float64, summed NLL of each text.
        num_tokens: ``(N,)`` int64, scored tokens of each text.
    """

    genppl: float
    mean_nll: float
    total_tokens: int
    nll_sum: np.ndarray
    num_tokens: np.ndarray


@dataclass(frozen=True)
class MauveResult:
    """A MAUVE score and the settings that produced it."""

    mauve: float
    num_clusters: int
    frontier_integral: float
    num_p: int
    num_q: int


@dataclass(frozen=True)
class ReferenceSet:
    """Held-out real text, processed like the samples.

    Attributes:
        texts: decoded texts (EOS policy applied).
        token_ids: decoder token ids kept by the EOS policy, one list per text.
        indices: block indices in the split.
        split: the split they come from.
        seq_len: decoder tokens per block (= the samples' length).
    """

    texts: list[str]
    token_ids: list[list[int]]
    indices: list[int]
    split: str
    seq_len: int


@dataclass(frozen=True)
class ReferenceFloor:
    """What real text scores under the same judge: the floor of GenPPL.

    Attributes:
        genppl: GenPPL of the reference texts.
        entropy: their mean unigram entropy (nats).
        num_references: how many texts.
        mauve_real: MAUVE of the references against as many other held-out texts
            (the ceiling; None when the split is too small or MAUVE is off).
        scorer_valid_ppl: the judge's own validation perplexity (None for a scorer
            that is not a trained judge, e.g. gpt2-large).
    """

    genppl: float
    entropy: float
    num_references: int
    mauve_real: float | None
    scorer_valid_ppl: float | None


@dataclass(frozen=True)
class EvalRecord:
    """One sample set, evaluated. Written as JSON; all fields are plain data.

    Attributes:
        samples: the sample file.
        num_samples: samples in it.
        model: the sampler (``mdlm``, ``ladiff``, ``diladiff``) from the meta record.
        checkpoint: the checkpoint that drew them.
        settings: the sampling settings (ndisc, selection, temperature, seed...).
        seq_len: decoder tokens per sample.
        eos: the EOS policy applied to samples and references.
        genppl: generative perplexity of the samples (token-weighted).
        genppl_tokens: scorer tokens scored.
        reference_genppl: GenPPL of the held-out references (the floor).
        scorer_valid_ppl: the judge's own validation perplexity (None for gpt2-large).
        entropy: mean unigram entropy of the samples (nats).
        reference_entropy: the same for the references.
        mauve: MAUVE of samples vs references (None when disabled).
        scorer: the scorer's name, window length, precision and batch size.
        mauve_settings: featuriser, pooling, clusters, seed, scaling, references.
        speed: throughput from the timing record.
        seconds_eval: time this evaluation took.
    """

    samples: str
    num_samples: int
    model: str
    checkpoint: str | None
    settings: dict[str, Any]
    seq_len: int
    eos: str
    genppl: float
    genppl_tokens: int
    reference_genppl: float
    scorer_valid_ppl: float | None
    entropy: float
    reference_entropy: float
    mauve: float | None
    scorer: dict[str, Any]
    mauve_settings: dict[str, Any] | None
    speed: Speed
    seconds_eval: float


# ----------------------------------------------------------------------------- metrics


def token_entropy(ids: Sequence[int]) -> float:
    """Entropy (nats) of the unigram distribution of ``ids``; 0 for an empty list."""
    if len(ids) == 0:
        return 0.0
    _, counts = np.unique(np.asarray(ids, dtype=np.int64), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def entropy(samples: Sequence[Sequence[int]]) -> float:
    """Mean over samples of :func:`token_entropy` (MDLM's diversity measure)."""
    if len(samples) == 0:
        raise DiladiffError("entropy of an empty sample set")
    return float(np.mean([token_entropy(ids) for ids in samples]))


def scoring_windows(length: int, context: int) -> list[tuple[int, int]]:
    """Windows ``(start, end)`` over a sequence of ``length`` scorer tokens.

    Window ``ids[start:end]`` predicts ``ids[start + 1:end]``; consecutive windows
    overlap by one token, so every token but the first is predicted exactly once.
    """
    if context < 2:
        raise ValueError(f"context must be at least 2, got {context}")
    windows, start = [], 0
    while start + 1 < length:
        windows.append((start, min(start + context, length)))
        start += context - 1
    return windows


def _scorer_context(model: Any, requested: int) -> int:
    config = model.config
    limit = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if requested:
        if limit and requested > limit:
            raise DiladiffError(
                f"eval.scorer.context {requested} exceeds the scorer's maximum of {limit} positions"
            )
        return requested
    if not limit:
        raise DiladiffError("the scorer's config gives no maximum length: set eval.scorer.context")
    return int(limit)


def _prefix_id(tokenizer: Any) -> int:
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if bos is None:
        raise DiladiffError(
            f"scorer tokenizer {tokenizer.name_or_path} has neither a BOS nor an EOS token"
        )
    return int(bos)


@torch.no_grad()
def genppl(
    texts: Sequence[str],
    *,
    model: Any,
    tokenizer: Any,
    batch_size: int = 16,
    context: int = 0,
    precision: Precision = "fp32",
) -> PerplexityResult:
    """Generative perplexity of ``texts`` under a causal LM (see the module docstring).

    Args:
        texts: the texts (already decoded, EOS policy applied).
        model: a Hugging Face causal LM in eval mode; it stays on its device.
        tokenizer: the scorer's tokenizer.
        batch_size: windows per forward pass.
        context: window length; 0 = the model's maximum positions.
        precision: autocast precision of the forward pass (the NLL is fp32).

    Returns:
        A :class:`PerplexityResult`.
    """
    device = next(model.parameters()).device
    ctx = _scorer_context(model, context)
    prefix = _prefix_id(tokenizer)
    encoded = tokenizer(
        list(texts), add_special_tokens=False, return_attention_mask=False, verbose=False
    )["input_ids"]
    windows: list[tuple[int, list[int]]] = []  # (text index, window ids)
    for i, ids in enumerate(encoded):
        seq = [prefix, *ids]
        windows += [(i, seq[a:b]) for a, b in scoring_windows(len(seq), ctx)]
    windows.sort(key=lambda w: -len(w[1]))  # similar lengths together: less padding
    nll_sum = np.zeros(len(encoded), dtype=np.float64)
    num_tokens = np.zeros(len(encoded), dtype=np.int64)
    for lo in range(0, len(windows), batch_size):
        chunk = windows[lo : lo + batch_size]
        width = len(chunk[0][1])
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for r, (_, w) in enumerate(chunk):
            ids[r, : len(w)] = torch.tensor(w)
            mask[r, : len(w)] = 1
        ids, mask = ids.to(device), mask.to(device)
        with autocast(device, precision):
            logits = model(input_ids=ids, attention_mask=mask).logits  # (B, W, V)
        nll = F.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none"
        )  # (B, W - 1)
        nll = (nll * mask[:, 1:]).double().sum(dim=1).cpu().numpy()
        for r, (i, w) in enumerate(chunk):
            nll_sum[i] += nll[r]
            num_tokens[i] += len(w) - 1
    total = int(num_tokens.sum())
    mean = float(nll_sum.sum() / total) if total else float("nan")
    return PerplexityResult(
        genppl=math.exp(mean) if total else float("nan"),
        mean_nll=mean,
        total_tokens=total,
        nll_sum=nll_sum,
        num_tokens=num_tokens,
    )


def mauve_score(
    p_features: np.ndarray,
    q_features: np.ndarray,
    *,
    num_clusters: int = 0,
    seed: int = 25,
    scaling: float = 5.0,
    explained_variance: float = 0.9,
    kmeans_redo: int = 5,
    kmeans_max_iter: int = 500,
) -> MauveResult:
    """MAUVE (mauve-text) between two feature sets, offline.

    Args:
        p_features: ``(N, D)`` features of one text set (the samples).
        q_features: ``(M, D)`` features of the other (the references).
        num_clusters: k-means clusters; 0 = mauve's ``auto`` (max(2, round(min(N, M) / 10))).
        seed: k-means seed.
        scaling: MAUVE's scaling factor c.
        explained_variance: PCA keeps this share of the variance.
        kmeans_redo: k-means restarts.
        kmeans_max_iter: k-means iterations.

    Returns:
        A :class:`MauveResult`.
    """
    from mauve import compute_mauve

    p = np.asarray(p_features, dtype=np.float32)
    q = np.asarray(q_features, dtype=np.float32)
    if p.ndim != 2 or q.ndim != 2 or p.shape[1] != q.shape[1]:
        raise DiladiffError(
            f"MAUVE needs (N, D) features of one width, got {p.shape} and {q.shape}"
        )
    if min(len(p), len(q)) < 2:
        raise DiladiffError("MAUVE needs at least 2 texts on each side")
    out = compute_mauve(
        p_features=p,
        q_features=q,
        num_buckets=num_clusters or "auto",
        kmeans_explained_var=explained_variance,
        kmeans_num_redo=kmeans_redo,
        kmeans_max_iter=kmeans_max_iter,
        mauve_scaling_factor=scaling,
        seed=seed,
        verbose=False,
    )
    return MauveResult(
        mauve=float(out.mauve),
        num_clusters=int(out.num_buckets),
        frontier_integral=float(out.frontier_integral),
        num_p=len(p),
        num_q=len(q),
    )


def resolve_model_name(name: str) -> str:
    """``"minilm"`` -> the shipped MiniLM directory; anything else unchanged."""
    return str(hub.minilm_dir()) if name == MINILM else name


class TextFeaturizer:
    """Text -> feature vectors for MAUVE.

    Args:
        name: hub id or local directory (``"minilm"``: the shipped MiniLM).
        pooling: ``"mauve"`` (the package's own featuriser: the last token's
            last-layer state, as with gpt2-large), ``"mean"`` (mean of the last
            hidden states over non-pad tokens) or ``"last"`` (the last non-pad
            token's state).
        max_length: tokens per text (longer texts are truncated).
        batch_size: texts per forward pass.
        device: where the encoder runs.
    """

    def __init__(
        self,
        *,
        name: str,
        pooling: Featurizer,
        max_length: int,
        batch_size: int,
        device: torch.device,
    ) -> None:
        from transformers import AutoModel

        self.name = name
        self.pooling = pooling
        self.max_length = max_length
        self.batch_size = batch_size
        self.path = resolve_model_name(name)
        self.tokenizer = hub.load_tokenizer(self.path)
        if self.tokenizer.pad_token is None:  # GPT-2 style: pad with EOS (masked out anyway)
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"  # pooling below assumes it
        self.model = hub.load_auto_model(self.path, AutoModel).to(device).eval()
        self.device = device

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """``(N, D)`` float32 features of ``texts``."""
        if self.pooling == "mauve":
            return self._package_features(texts)
        feats = []
        for lo in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                list(texts[lo : lo + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**enc).last_hidden_state.float()  # (B, T, D)
            mask = enc["attention_mask"].float()  # (B, T)
            if self.pooling == "mean":
                pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
            else:
                last = mask.sum(1).long().clamp(min=1) - 1  # right padding: last real token
                pooled = hidden[torch.arange(len(hidden)), last]
            feats.append(pooled.cpu())
        return torch.cat(feats).numpy()

    def _package_features(self, texts: Sequence[str]) -> np.ndarray:
        from mauve.utils import featurize_tokens_from_model

        fallback = self.tokenizer.eos_token_id or 0  # an empty text has no last token
        tokens = []
        for text in texts:
            ids = self.tokenizer.encode(
                text, truncation=True, max_length=self.max_length, verbose=False
            ) or [fallback]
            tokens.append(torch.tensor([ids]))
        feats = featurize_tokens_from_model(self.model, tokens, self.batch_size, name="texts")
        return feats.float().numpy()


def bertscore_f1(
    candidates: Sequence[str],
    references: Sequence[str],
    *,
    model: str = MINILM,
    num_layers: int | None = 6,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """BERTScore-F1 of each candidate against its reference (bert-score, no rescaling).

    Args:
        candidates: N texts.
        references: N texts, paired with the candidates.
        model: hub id or local directory (``"minilm"``: the shipped MiniLM); a
            local directory needs ``num_layers``.
        num_layers: which layer's states are compared.
        batch_size: texts per forward pass.
        device: where the encoder runs.

    Returns:
        ``(N,)`` float64 F1 scores.
    """
    if len(candidates) != len(references):
        raise DiladiffError(
            f"BERTScore needs paired texts: {len(candidates)} candidates, {len(references)} references"
        )
    if not candidates:
        raise DiladiffError("BERTScore of an empty list")
    path = resolve_model_name(model)
    if Path(path).is_dir() and num_layers is None:
        raise DiladiffError(f"BERTScore with a local model ({path}) needs num_layers")
    hub.load_tokenizer(path)  # fails fast, in one line, if the model cannot be had
    from bert_score import score

    _, _, f1 = score(
        list(candidates),
        list(references),
        model_type=path,
        num_layers=num_layers,
        batch_size=batch_size,
        device=str(device),
        rescale_with_baseline=False,  # a baseline file exists only for hub model names
    )
    return f1.double().numpy()


def speed_from_meta(meta: dict[str, Any], *, source: str = "meta record") -> Speed:
    """The :class:`Speed` of a sample set from its ``.meta.json`` record."""
    timing = meta.get("timing")
    if not isinstance(timing, dict):
        raise DiladiffError(f"{source} has no timing record (write samples with `diladiff sample`)")
    try:
        return Speed(
            forward_passes_discrete=float(timing["forward_passes_discrete"]),
            forward_passes_latent=float(timing.get("forward_passes_latent", 0.0)),
            tokens_per_forward=float(timing["tokens_per_forward"]),
            seconds_per_sample=float(timing["seconds_per_sample"]),
            seconds_total=float(timing["seconds_total"]),
            latent_share=float(timing.get("latent_share", 0.0)),
            device=str(timing.get("device", "unknown")),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise DiladiffError(f"{source}: malformed timing record ({err})") from None


# ----------------------------------------------------------------------------- text


class BlockText:
    """Decoder token blocks -> (kept ids, text) under an EOS policy.

    Args:
        tokenizer: the decoder's (the data's) tokenizer.
        policy: ``"strip"`` or ``"truncate"`` (module docstring).
        bos_id: the blocks' BOS.
        eos_id: the blocks' EOS (document separator).
        mask_id: the mask token (never text).
    """

    def __init__(
        self, *, tokenizer: Any, policy: EosPolicy, bos_id: int, eos_id: int, mask_id: int
    ) -> None:
        self.tokenizer = tokenizer
        self.policy = policy
        self.bos_id, self.eos_id = bos_id, eos_id
        self.special = {*tokenizer.all_special_ids, bos_id, eos_id, mask_id}

    def kept_ids(self, ids: Sequence[int]) -> list[int]:
        ids = list(ids)
        if self.policy == "truncate":
            if ids and ids[0] == self.bos_id:
                ids = ids[1:]
            if self.eos_id in ids:
                ids = ids[: ids.index(self.eos_id)]
        return [t for t in ids if t not in self.special]

    def __call__(self, blocks: Sequence[Sequence[int]]) -> tuple[list[list[int]], list[str]]:
        kept = [self.kept_ids(b) for b in blocks]
        texts = self.tokenizer.batch_decode(
            kept, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        return kept, texts


def reference_blocks(
    data_dir: str | Path, *, split: str, num: int, seed: int, offset: int = 0
) -> tuple[list[int], np.ndarray]:
    """``num`` blocks of a prepared split, the same ones for a given seed.

    The split's blocks are permuted with ``seed``; positions ``offset`` to
    ``offset + num`` of the permutation are taken (``offset`` gives a disjoint set).

    Returns:
        (block indices, ``(num, L)`` int64 token ids).

    Raises:
        DiladiffError: if the split has fewer than ``offset + num`` blocks.
    """
    blocks = load_blocks(data_dir, split)
    if num < 1:
        raise DiladiffError(f"need at least 1 reference, got {num}")
    if offset + num > len(blocks):
        raise DiladiffError(
            f"the reference split '{split}' of {data_dir} has {len(blocks)} blocks, fewer than "
            f"the {offset + num} needed ({num} references"
            + (f" after {offset} others" if offset else "")
            + "): draw fewer samples or set eval.num_references"
        )
    order = np.random.default_rng(seed).permutation(len(blocks))[offset : offset + num]
    return order.tolist(), blocks.tokens(order).numpy()


# ----------------------------------------------------------------------------- samples


@dataclass(frozen=True)
class SampleFile:
    """A sample set read back: ``tokens`` is ``(N, L)`` int64, ``meta`` its record."""

    path: Path
    tokens: np.ndarray
    meta: dict[str, Any]


def read_samples(path: str | Path) -> SampleFile:
    """Read a ``diladiff sample`` JSONL file and its ``.meta.json`` record.

    Raises:
        DiladiffError: missing or empty file, malformed line, ragged samples,
            missing record.
    """
    path = Path(path)
    if not path.is_file():
        raise DiladiffError(f"sample file not found: {path}")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            tokens = json.loads(line)["tokens"]
        except (ValueError, KeyError, TypeError):
            raise DiladiffError(f"{path}:{n}: not a sample line (JSON with 'tokens')") from None
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise DiladiffError(f"{path}:{n}: 'tokens' must be a list of token ids")
        rows.append(tokens)
    if not rows:
        raise DiladiffError(f"sample file {path} is empty")
    lengths = sorted({len(r) for r in rows})
    if len(lengths) != 1:
        raise DiladiffError(f"{path}: samples of different lengths {lengths[:4]}")
    record = meta_path(path)
    if not record.is_file():
        raise DiladiffError(f"{path} has no timing record {record} (written by `diladiff sample`)")
    try:
        meta = json.loads(record.read_text())
    except ValueError:
        raise DiladiffError(f"{record} is not valid JSON") from None
    return SampleFile(path=path, tokens=np.asarray(rows, dtype=np.int64), meta=meta)


def _vocab(tokenizer: Any) -> dict[str, int]:
    return tokenizer.get_vocab()


def check_same_tokenizer(
    samples: SampleFile, *, tokenizer: Any, vocab_size: int, source: str
) -> None:
    """Refuse samples drawn with another tokenizer than the reference data's."""
    where = f"{samples.path} (tokenizer {samples.meta.get('tokenizer', '?')})"
    meta_vocab = samples.meta.get("vocab_size")
    if meta_vocab is not None and int(meta_vocab) != vocab_size:
        raise DiladiffError(
            f"{where} has vocabulary {meta_vocab}, the reference data {source} has {vocab_size}: "
            "samples of another tokenizer"
        )
    if samples.tokens.min() < 0 or samples.tokens.max() >= vocab_size:
        raise DiladiffError(
            f"{where} holds token id {int(samples.tokens.max())} outside the reference data's "
            f"vocabulary of {vocab_size}: samples of another tokenizer"
        )
    theirs = samples.meta.get("tokenizer")
    if theirs and Path(theirs).is_dir():
        if _vocab(hub.load_tokenizer(theirs)) != _vocab(tokenizer):
            raise DiladiffError(f"{where} uses another tokenizer than the reference data {source}")


# ----------------------------------------------------------------------------- evaluator


def read_judge_record(scorer: str) -> dict[str, Any] | None:
    """The ``judge.json`` a trained judge carries (None for any other scorer)."""
    path = Path(scorer) / JUDGE_RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


class Evaluator:
    """Evaluates sample sets against one prepared data directory.

    The scorer, the featuriser, the references and their scores are loaded or
    computed once and reused for every sample set (a sweep evaluates many).

    Args:
        cfg: the evaluation settings.
        data_dir: the prepared data (tokenizer and reference split).
        device: where the scorer and the featuriser run.
        reporter: progress messages.
    """

    def __init__(
        self,
        *,
        cfg: EvalConfig,
        data_dir: str | Path,
        device: torch.device,
        reporter: Reporter | None = None,
    ) -> None:
        self.cfg = cfg
        self.data_dir = Path(data_dir)
        self.device = torch.device(device)
        self.reporter = reporter
        self.info = load_data_info(self.data_dir)
        self.tokenizer = hub.load_tokenizer(self.info.tokenizer_dir)
        self.text = BlockText(
            tokenizer=self.tokenizer,
            policy=cfg.eos,
            bos_id=self.info.bos_id,
            eos_id=self.info.eos_id,
            mask_id=self.info.mask_id,
        )
        self._scorer: tuple[Any, Any] | None = None
        self._featurizer: TextFeaturizer | None = None
        self._refs: dict[tuple[int, int], tuple[ReferenceSet, dict[str, Any]]] = {}
        self.judge = read_judge_record(cfg.scorer.name)

    def _log(self, message: str) -> None:
        if self.reporter is not None:
            self.reporter.log(message)

    # -- lazily loaded parts

    def scorer(self) -> tuple[Any, Any]:
        """(model, tokenizer) of the GenPPL scorer, loaded once."""
        if self._scorer is None:
            from transformers import AutoModelForCausalLM

            name = self.cfg.scorer.name
            if hub._looks_like_path(name) and not Path(name).expanduser().is_dir():
                raise DiladiffError(
                    f"scorer {name} not found: train it with `diladiff train-judge` "
                    "or set eval.scorer.name (e.g. gpt2-large)"
                )
            tokenizer = hub.load_tokenizer(name)
            model = hub.load_auto_model(name, AutoModelForCausalLM)
            self._scorer = (model.to(self.device).eval(), tokenizer)
            self._log(f"scorer {name}: context {_scorer_context(model, self.cfg.scorer.context)}")
        return self._scorer

    def featurizer(self) -> TextFeaturizer:
        if self._featurizer is None:
            m = self.cfg.mauve
            self._featurizer = TextFeaturizer(
                name=m.features,
                pooling=m.featurizer,
                max_length=m.max_length,
                batch_size=m.batch_size,
                device=self.device,
            )
        return self._featurizer

    def _genppl(self, texts: Sequence[str]) -> PerplexityResult:
        model, tokenizer = self.scorer()
        s = self.cfg.scorer
        return genppl(
            texts,
            model=model,
            tokenizer=tokenizer,
            batch_size=s.batch_size,
            context=s.context,
            precision=s.precision,
        )

    def _mauve(self, p: np.ndarray, q: np.ndarray) -> MauveResult:
        m = self.cfg.mauve
        return mauve_score(
            p,
            q,
            num_clusters=m.num_clusters,
            seed=m.seed,
            scaling=m.scaling,
            explained_variance=m.explained_variance,
            kmeans_redo=m.kmeans_redo,
            kmeans_max_iter=m.kmeans_max_iter,
        )

    # -- references

    def _num_references(self, num_samples: int) -> int:
        return self.cfg.num_references or num_samples

    def references(self, num: int, *, offset: int = 0) -> tuple[ReferenceSet, dict[str, Any]]:
        """``num`` reference texts and their scores (GenPPL, entropy, features), cached."""
        key = (num, offset)
        if key not in self._refs:
            indices, blocks = reference_blocks(
                self.data_dir,
                split=self.cfg.reference_split,
                num=num,
                seed=self.cfg.reference_seed,
                offset=offset,
            )
            kept, texts = self.text(blocks.tolist())
            refs = ReferenceSet(
                texts=texts,
                token_ids=kept,
                indices=indices,
                split=self.cfg.reference_split,
                seq_len=int(blocks.shape[1]),
            )
            scores: dict[str, Any] = {}
            self._refs[key] = (refs, scores)
        return self._refs[key]

    def _reference_scores(self, num: int, *, offset: int = 0) -> dict[str, Any]:
        refs, scores = self.references(num, offset=offset)
        if "genppl" not in scores:
            scores["genppl"] = self._genppl(refs.texts).genppl
            scores["entropy"] = entropy(refs.token_ids)
        if self.cfg.mauve.enabled and "features" not in scores:
            scores["features"] = self.featurizer()(refs.texts)
        return scores

    def floor(self, num: int) -> ReferenceFloor:
        """What ``num`` held-out real texts score: GenPPL, entropy, and MAUVE against
        ``num`` other held-out texts when the split has them."""
        scores = self._reference_scores(num)
        mauve_real = None
        if self.cfg.mauve.enabled:
            try:
                other = self._reference_scores(num, offset=num)
            except DiladiffError:  # the split is too small for a second, disjoint set
                other = None
            if other is not None:
                mauve_real = self._mauve(other["features"], scores["features"]).mauve
        return ReferenceFloor(
            genppl=scores["genppl"],
            entropy=scores["entropy"],
            num_references=num,
            mauve_real=mauve_real,
            scorer_valid_ppl=self.judge.get("valid_ppl") if self.judge else None,
        )

    # -- one sample set

    def check(self, samples: SampleFile) -> int:
        """Every check that can fail before anything is computed; returns the number
        of references to use."""
        check_same_tokenizer(
            samples,
            tokenizer=self.tokenizer,
            vocab_size=self.info.vocab_size,
            source=str(self.data_dir),
        )
        length = samples.tokens.shape[1]
        if length != self.info.seq_len:
            raise DiladiffError(
                f"{samples.path}: samples are {length} tokens long, the reference blocks of "
                f"{self.data_dir} {self.info.seq_len}: MAUVE and GenPPL compare equal lengths"
            )
        num = self._num_references(len(samples.tokens))
        self.references(num)  # raises when the split is too small
        self.scorer()  # raises when the scorer cannot be loaded
        return num

    def evaluate(self, path: str | Path) -> EvalRecord:
        """Evaluate one sample file (nothing is written)."""
        t0 = time.perf_counter()
        samples = read_samples(path)
        speed = speed_from_meta(samples.meta, source=str(meta_path(samples.path)))
        num_refs = self.check(samples)
        kept, texts = self.text(samples.tokens.tolist())
        self._log(f"eval {samples.path}: GenPPL")
        ppl = self._genppl(texts)
        if ppl.total_tokens == 0:
            raise DiladiffError(f"{samples.path}: no sample has any text to score")
        ref = self._reference_scores(num_refs)
        mauve = None
        mauve_settings = None
        if self.cfg.mauve.enabled:
            self._log(f"eval {samples.path}: MAUVE")
            result = self._mauve(self.featurizer()(texts), ref["features"])
            mauve = result.mauve
            m = self.cfg.mauve
            mauve_settings = {
                "feature_model": m.features,
                "feature_path": self.featurizer().path,
                "featurizer": m.featurizer,
                "max_length": m.max_length,
                "num_clusters": result.num_clusters,
                "seed": m.seed,
                "scaling": m.scaling,
                "explained_variance": m.explained_variance,
                "kmeans_redo": m.kmeans_redo,
                "kmeans_max_iter": m.kmeans_max_iter,
                "num_samples": result.num_p,
                "num_references": result.num_q,
                "reference_split": self.cfg.reference_split,
                "reference_seed": self.cfg.reference_seed,
            }
        model, _ = self.scorer()
        s = self.cfg.scorer
        return EvalRecord(
            samples=str(samples.path),
            num_samples=len(texts),
            model=str(samples.meta.get("model", "unknown")),
            checkpoint=samples.meta.get("checkpoint"),
            settings=dict(samples.meta.get("settings", {})),
            seq_len=int(samples.tokens.shape[1]),
            eos=self.cfg.eos,
            genppl=ppl.genppl,
            genppl_tokens=ppl.total_tokens,
            reference_genppl=ref["genppl"],
            scorer_valid_ppl=self.judge.get("valid_ppl") if self.judge else None,
            entropy=entropy(kept),
            reference_entropy=ref["entropy"],
            mauve=mauve,
            scorer={
                "name": s.name,
                "context": _scorer_context(model, s.context),
                "precision": s.precision,
                "batch_size": s.batch_size,
                "num_references": num_refs,
            },
            mauve_settings=mauve_settings,
            speed=speed,
            seconds_eval=time.perf_counter() - t0,
        )


def record_path(samples: str | Path) -> Path:
    """Where the record of a sample file goes (``mdlm.jsonl`` -> ``mdlm.eval.json``)."""
    samples = Path(samples)
    return samples.with_name(samples.stem + ".eval.json")


def write_record(record: EvalRecord, out: str | Path) -> Path:
    """Write a record as JSON, atomically."""
    atomic_write_text(out, json.dumps(asdict(record), indent=2) + "\n")
    return Path(out)


def evaluate_samples(
    samples: str | Path,
    *,
    cfg: EvalConfig,
    data_dir: str | Path,
    device: torch.device | str = "cpu",
    out: str | Path | None = None,
    reporter: Reporter | None = None,
) -> EvalRecord:
    """Evaluate one sample file and write its record (``<stem>.eval.json`` by default).

    Args:
        samples: a JSONL file written by ``diladiff sample`` (its ``.meta.json`` beside it).
        cfg: the evaluation settings.
        data_dir: the prepared data the samples' model was trained on (its tokenizer
            decodes the samples; its ``cfg.reference_split`` gives the references).
        device: where the scorer and the featuriser run.
        out: the record's path.
        reporter: progress messages.

    Returns:
        The :class:`EvalRecord` (written only when complete).
    """
    evaluator = Evaluator(
        cfg=cfg, data_dir=data_dir, device=torch.device(device), reporter=reporter
    )
    record = evaluator.evaluate(samples)
    write_record(record, out or record_path(samples))
    return record
