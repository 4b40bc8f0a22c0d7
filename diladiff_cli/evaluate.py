"""Evaluating a sample set: read it, decode it, score it against held-out text.

:meth:`Evaluator.evaluate` reads a sample file written by ``diladiff sample``
(JSONL plus its ``.meta.json`` timing record) and returns one :class:`EvalRecord`;
:func:`write_record` writes it as ``<stem>.eval.json`` beside the samples. The
measures themselves (GenPPL, entropy, MAUVE) are in :mod:`diladiff_cli.metrics`.

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

* **GenPPL** of the decoded texts under the scorer (``eval.scorer``), in
  overlapping windows of its context length, token-weighted over the set.
* **Entropy**: per sample, of the decoder token ids that the EOS policy keeps.
* **MAUVE** between the samples and as many held-out reference texts: blocks of
  the prepared split (``valid``), drawn with a fixed seed; all blocks and samples
  have the same decoder-token length L (checked). Features: ``eval.mauve``.
* The **floor**: the same GenPPL and entropy computed on the reference texts
  (what a perfect sampler would reach), and the scorer's own validation
  perplexity when the scorer is a judge trained by ``diladiff train-judge``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diladiff_cli import hub
from diladiff_cli.checkpoint import read_meta
from diladiff_cli.config.evaluation import ORACLE_SCORER, EosPolicy, EvalConfig
from diladiff_cli.data import load_blocks, load_data_info
from diladiff_cli.errors import CheckpointError, DiladiffError
from diladiff_cli.files import atomic_write_json
from diladiff_cli.judge import read_judge_record
from diladiff_cli.metrics import (
    MauveResult,
    PerplexityResult,
    TextFeaturizer,
    entropy,
    genppl,
    mauve_score,
    scorer_context,
)
from diladiff_cli.oracle import ORACLE_FILE, Oracle, OracleMeasures, load_oracle, words_of
from diladiff_cli.sample import meta_path
from diladiff_cli.train import Reporter

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
        oracle: the exact scorer's measures of the references (oracle corpora only):
            their NLL per token estimates the process's entropy rate.
    """

    genppl: float
    entropy: float
    num_references: int
    mauve_real: float | None
    scorer_valid_ppl: float | None
    oracle: OracleMeasures | None = None


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
        oracle: the exact scorer's measures of the samples (oracle corpora only).
        reference_oracle: the same for the references (the floor).
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
    oracle: OracleMeasures | None = None
    reference_oracle: OracleMeasures | None = None


@dataclass(frozen=True)
class TextScores:
    """What the recipe's scorer says of free texts (:meth:`Evaluator.score_texts`).

    Attributes:
        num_texts: texts scored.
        genppl: their GenPPL under the scorer (token-weighted); under the exact scorer
            ``oracle``, the oracle's perplexity.
        genppl_tokens: scorer tokens (oracle: words) scored.
        entropy: mean unigram entropy of their decoder tokens (nats).
        scorer: the scorer's name.
        eos: the EOS policy applied before scoring.
        oracle: the exact scorer's measures (oracle corpora only).
    """

    num_texts: int
    genppl: float
    genppl_tokens: int
    entropy: float
    scorer: str
    eos: str
    oracle: OracleMeasures | None = None


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
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:  # a damaged file, or not a sample file at all
        raise DiladiffError(f"{path} is not a text file of samples") from None
    rows = []
    for n, line in enumerate(lines, 1):
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


def load_scorer(name: str, device: torch.device) -> tuple[Any, Any]:
    """The GenPPL scorer: a Hugging Face causal LM in eval mode on ``device``, and its
    tokenizer.

    Args:
        name: a judge directory written by ``diladiff train-judge``, or a hub id.
        device: where the model runs.

    Raises:
        DiladiffError: ``name`` is a path with no directory behind it.
    """
    from transformers import AutoModelForCausalLM

    if hub.looks_like_path(name) and not Path(name).expanduser().is_dir():
        raise DiladiffError(
            f"scorer {name} not found: train it with `diladiff train-judge` "
            "or set eval.scorer.name (e.g. gpt2-large)"
        )
    tokenizer = hub.load_tokenizer(name)
    model = hub.load_auto_model(name, AutoModelForCausalLM)
    return model.to(device).eval(), tokenizer


def read_references(
    data_dir: str | Path, *, text: BlockText, split: str, num: int, seed: int, offset: int = 0
) -> ReferenceSet:
    """``num`` held-out blocks (see :func:`reference_blocks`), decoded by ``text``."""
    indices, blocks = reference_blocks(data_dir, split=split, num=num, seed=seed, offset=offset)
    kept, texts = text(blocks.tolist())
    return ReferenceSet(
        texts=texts,
        token_ids=kept,
        indices=indices,
        split=split,
        seq_len=int(blocks.shape[1]),
    )


def mauve_settings(cfg: EvalConfig, result: MauveResult, *, feature_path: str) -> dict[str, Any]:
    """What a record's MAUVE score was measured with (its ``mauve_settings``)."""
    m = cfg.mauve
    return {
        "feature_model": m.features,
        "feature_path": feature_path,
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
        "reference_split": cfg.reference_split,
        "reference_seed": cfg.reference_seed,
    }


class Scorers:
    """The GenPPL scorer and the MAUVE featuriser of one evaluation config, each loaded
    when first used, and the two measures with the config's settings.

    Args:
        cfg: the evaluation settings (``cfg.scorer``, ``cfg.mauve``).
        device: where the scorer and the featuriser run.
        log: progress messages.
    """

    def __init__(
        self, *, cfg: EvalConfig, device: torch.device, log: Callable[[str], None]
    ) -> None:
        self.cfg = cfg
        self.device = device
        self.log = log
        self._scorer: tuple[Any, Any] | None = None
        self._featurizer: TextFeaturizer | None = None

    def scorer(self) -> tuple[Any, Any]:
        """(model, tokenizer) of the GenPPL scorer, loaded once."""
        if self._scorer is None:
            self._scorer = load_scorer(self.cfg.scorer.name, self.device)
            self.log(f"scorer {self.cfg.scorer.name}: context {self.context()}")
        return self._scorer

    def context(self) -> int:
        """The scorer's GenPPL window length."""
        return scorer_context(self.scorer()[0], self.cfg.scorer.context)

    def featurizer(self) -> TextFeaturizer:
        """The MAUVE featuriser, loaded once."""
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

    def genppl(self, texts: Sequence[str]) -> PerplexityResult:
        """GenPPL of ``texts`` under the scorer."""
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

    def mauve(self, p: np.ndarray, q: np.ndarray) -> MauveResult:
        """MAUVE between two feature sets, with the config's clustering settings."""
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
        self.scorers = Scorers(cfg=cfg, device=self.device, log=self._log)
        self._refs: dict[tuple[int, int], tuple[ReferenceSet, dict[str, Any]]] = {}
        self.exact = cfg.scorer.name == ORACLE_SCORER  # GenPPL by the oracle, no LM
        self.oracle: Oracle | None = None
        if (self.data_dir / ORACLE_FILE).is_file() or self.exact:
            self.oracle = load_oracle(self.data_dir)  # one line when it is not an oracle corpus
        self.judge = None if self.exact else read_judge_record(cfg.scorer.name)

    def _log(self, message: str) -> None:
        if self.reporter is not None:
            self.reporter.log(message)

    @property
    def scorer_valid_ppl(self) -> float | None:
        """The judge's own validation perplexity (None for a scorer that is not a judge)."""
        return self.judge.get("valid_ppl") if self.judge else None

    # -- references

    def references(self, num: int, *, offset: int = 0) -> tuple[ReferenceSet, dict[str, Any]]:
        """``num`` reference texts and their scores (GenPPL, entropy, features), cached."""
        key = (num, offset)
        if key not in self._refs:
            refs = read_references(
                self.data_dir,
                text=self.text,
                split=self.cfg.reference_split,
                num=num,
                seed=self.cfg.reference_seed,
                offset=offset,
            )
            self._refs[key] = (refs, {})  # the scores are filled in when first needed
        return self._refs[key]

    def _reference_scores(self, num: int, *, offset: int = 0) -> dict[str, Any]:
        refs, scores = self.references(num, offset=offset)
        if "entropy" not in scores:
            if self.oracle is not None:
                scores["oracle"] = self.oracle.measure([words_of(t) for t in refs.texts])
            scores["genppl"] = (
                scores["oracle"].ppl if self.exact else self.scorers.genppl(refs.texts).genppl
            )
            scores["entropy"] = entropy(refs.token_ids)
        if self.cfg.mauve.enabled and "features" not in scores:
            scores["features"] = self.scorers.featurizer()(refs.texts)
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
                mauve_real = self.scorers.mauve(other["features"], scores["features"]).mauve
        return ReferenceFloor(
            genppl=scores["genppl"],
            entropy=scores["entropy"],
            num_references=num,
            mauve_real=mauve_real,
            scorer_valid_ppl=self.scorer_valid_ppl,
            oracle=scores.get("oracle"),
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
        if self.oracle is not None:
            self.check_oracle_corpus(samples)
        num = self.cfg.num_references or len(samples.tokens)
        self.references(num)  # raises when the split is too small
        if not self.exact:
            self.scorers.scorer()  # raises when the scorer cannot be loaded
        return num

    def check_oracle_corpus(self, samples: SampleFile) -> None:
        """Refuse samples of a model trained on other data (another corpus, another
        oracle seed): the oracle would score them, but the number would mean nothing."""
        fingerprint = samples.meta.get("data_fingerprint")
        if fingerprint is None:  # a record written before the field: ask the checkpoint
            try:
                extra = read_meta(samples.meta.get("checkpoint") or "").extra
                fingerprint = extra.get("data_fingerprint")
            except CheckpointError:
                fingerprint = None
        if fingerprint != self.info.fingerprint:
            raise DiladiffError(
                f"{samples.path}: drawn by a model of other data (data fingerprint "
                f"{fingerprint}), not of the oracle corpus {self.data_dir} "
                f"({self.info.fingerprint}): the oracle cannot score it"
            )

    def oracle_words(self, tokens: np.ndarray | Sequence[Sequence[int]]) -> list[list[str]]:
        """The words of each sample as the oracle reads them: decoded with the special
        tokens kept, so an EOS inside a block is counted (out of the vocabulary)."""
        rows = tokens.tolist() if isinstance(tokens, np.ndarray) else tokens
        return [words_of(self.tokenizer.decode(row, skip_special_tokens=False)) for row in rows]

    def _quality(
        self, texts: list[str], words: list[list[str]] | None, *, what: str
    ) -> tuple[OracleMeasures | None, float, int]:
        """The oracle's measures of ``words`` (oracle corpora: given, else None), and the
        GenPPL of ``texts`` with the number of tokens scored (the exact scorer: the oracle's).

        Raises:
            DiladiffError: nothing to score.
        """
        exact = None
        if self.oracle is not None and words is not None:
            self._log(f"eval {what}: oracle")
            exact = self.oracle.measure(words)
        if self.exact:
            genppl_value, genppl_tokens = exact.ppl, exact.words
        else:
            self._log(f"eval {what}: GenPPL")
            ppl = self.scorers.genppl(texts)
            genppl_value, genppl_tokens = ppl.genppl, ppl.total_tokens
        if genppl_tokens == 0:
            raise DiladiffError(f"{what}: no sample has any text to score")
        return exact, genppl_value, genppl_tokens

    def score_texts(self, texts: Sequence[str]) -> TextScores:
        """Score free texts as :meth:`evaluate` scores samples: each text is tokenised
        by the data's tokenizer, then goes the samples' way (EOS policy, oracle words,
        GenPPL, entropy). No references, no MAUVE.

        Raises:
            DiladiffError: no text, or nothing in them to score.
        """
        if not texts:
            raise DiladiffError("nothing to score: no texts")
        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        kept, decoded = self.text(ids)
        words = self.oracle_words(ids) if self.oracle is not None else None
        exact, genppl_value, genppl_tokens = self._quality(decoded, words, what="texts")
        return TextScores(
            num_texts=len(decoded),
            genppl=genppl_value,
            genppl_tokens=genppl_tokens,
            entropy=entropy(kept),
            scorer=self.cfg.scorer.name,
            eos=self.cfg.eos,
            oracle=exact,
        )

    def evaluate(self, path: str | Path) -> EvalRecord:
        """Evaluate one sample file (nothing is written)."""
        t0 = time.perf_counter()
        samples = read_samples(path)
        speed = speed_from_meta(samples.meta, source=str(meta_path(samples.path)))
        num_refs = self.check(samples)
        kept, texts = self.text(samples.tokens.tolist())
        words = self.oracle_words(samples.tokens) if self.oracle is not None else None
        exact, genppl_value, genppl_tokens = self._quality(texts, words, what=str(samples.path))
        ref = self._reference_scores(num_refs)
        mauve, settings = None, None
        if self.cfg.mauve.enabled:
            self._log(f"eval {samples.path}: MAUVE")
            featurizer = self.scorers.featurizer()
            result = self.scorers.mauve(featurizer(texts), ref["features"])
            mauve = result.mauve
            settings = mauve_settings(self.cfg, result, feature_path=featurizer.path)
        s = self.cfg.scorer
        return EvalRecord(
            samples=str(samples.path),
            num_samples=len(texts),
            model=str(samples.meta.get("model", "unknown")),
            checkpoint=samples.meta.get("checkpoint"),
            settings=dict(samples.meta.get("settings", {})),
            seq_len=int(samples.tokens.shape[1]),
            eos=self.cfg.eos,
            genppl=genppl_value,
            genppl_tokens=genppl_tokens,
            reference_genppl=ref["genppl"],
            scorer_valid_ppl=self.scorer_valid_ppl,
            entropy=entropy(kept),
            reference_entropy=ref["entropy"],
            mauve=mauve,
            scorer={
                "name": s.name,
                "context": self.info.seq_len if self.exact else self.scorers.context(),
                "precision": s.precision,
                "batch_size": s.batch_size,
                "num_references": num_refs,
            },
            mauve_settings=settings,
            speed=speed,
            seconds_eval=time.perf_counter() - t0,
            oracle=exact,
            reference_oracle=ref.get("oracle"),
        )


# ----------------------------------------------------------------------------- records on disk


def record_path(samples: str | Path) -> Path:
    """Where the record of a sample file goes (``mdlm.jsonl`` -> ``mdlm.eval.json``)."""
    samples = Path(samples)
    return samples.with_name(samples.stem + ".eval.json")


def write_record(record: EvalRecord, out: str | Path) -> Path:
    """Write a record as JSON, atomically."""
    atomic_write_json(out, asdict(record), indent=2)
    return Path(out)
