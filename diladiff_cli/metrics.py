"""The measures of a sample set: token entropy, GenPPL, MAUVE, BERTScore.

Each takes texts (or their features) and returns numbers; which texts, and how
they were decoded, is :mod:`diladiff_cli.evaluate`'s business.

* **GenPPL** (:func:`genppl`): each text is re-tokenised with the scorer's own
  tokenizer (no special tokens added), prefixed with the scorer's BOS (else its
  EOS), and cut into windows of the scorer's context length C that overlap by one
  token (:func:`scoring_windows`), so that every text token is predicted exactly
  once, with at most C - 1 tokens of context (a text of at most C - 1 tokens is
  one window: the paper recipes score 1024-token samples with gpt2-large in
  1024-token chunks). The BOS itself is not scored and no EOS is appended.
  GenPPL = exp(sum of NLL / number of scored tokens) over the whole text set
  (token-weighted, not a mean of per-text perplexities).
* **Entropy** (:func:`entropy`): per sample, the entropy (nats) of the unigram
  distribution of its token ids; averaged over samples (an empty sample has
  entropy 0).
* **MAUVE** (:func:`mauve_score`, mauve-text) between two feature sets.
  Features (:class:`TextFeaturizer`): the package's own featuriser (``mauve``:
  last-token state of the last layer, ``gpt2-large`` in the paper recipes), or a
  local encoder (``mean``: mean of the last hidden states over non-pad tokens;
  ``last``: the last non-pad token's state), passed as ``p_features`` /
  ``q_features``.
* **BERTScore-F1** (:func:`bertscore_f1`) of paired texts, without baseline
  rescaling.

Heavy optional libraries (mauve, bert_score, sklearn) are imported inside the
functions that need them: the GPU machines lack them and training does not
need them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from diladiff_cli import hub
from diladiff_cli.config.evaluation import Featurizer
from diladiff_cli.config.stages import MINILM
from diladiff_cli.config.train import Precision
from diladiff_cli.errors import DiladiffError
from diladiff_cli.train import autocast

# ----------------------------------------------------------------------------- results


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


# ----------------------------------------------------------------------------- entropy


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


# ----------------------------------------------------------------------------- GenPPL


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


def scorer_context(model: Any, requested: int) -> int:
    """The window length GenPPL uses with ``model``.

    Args:
        model: a Hugging Face causal LM.
        requested: ``eval.scorer.context``; 0 = the model's maximum positions.

    Raises:
        DiladiffError: ``requested`` exceeds the model's maximum, or 0 was asked of
            a model whose config gives no maximum.
    """
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
    ctx = scorer_context(model, context)
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


# ----------------------------------------------------------------------------- MAUVE


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


# ----------------------------------------------------------------------------- BERTScore


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
