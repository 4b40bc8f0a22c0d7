"""The oracle corpus (diladiff_cli.oracle and its `prepare` source): exact probabilities,
sampling, the tokenizer round trip, rule-break counts. Offline, CPU, seconds."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers / datasets read them
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import dataclasses  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from diladiff_cli import data  # noqa: E402
from diladiff_cli.config import load_recipe  # noqa: E402
from diladiff_cli.config.data import (  # noqa: E402
    CorpusConfig,
    DataConfig,
    OracleConfig,
    TokenizerConfig,
)
from diladiff_cli.data import load_blocks, load_data_info, prepare  # noqa: E402
from diladiff_cli.errors import DiladiffError  # noqa: E402
from diladiff_cli.oracle import (  # noqa: E402
    CLASSES,
    ORACLE_FILE,
    Oracle,
    bert_whole_words,
    build_oracle,
    load_oracle,
    text_of,
    unigram_entropy,
    words_of,
)

ROOT = Path(__file__).resolve().parent.parent
TINY_ORACLE = OracleConfig(num_documents=40, num_topics=4, seed=3)
TINY_VOCAB = 1650  # the BPE the full lexicon makes (the recipe's number)


# ----------------------------------------------------------------------------- enumerable


def _small_oracle(seed: int = 0) -> Oracle:
    """Two topics, five words, four grammar states (two of them determiners, so a word's
    state is not determined by the word and the forward algorithm has work to do)."""
    rng = np.random.default_rng(seed)
    c = {name: CLASSES.index(name) for name in ("det", "thing", "end")}
    words = ["the", "a", "ship", "cow", "."]
    word_class = [c["det"], c["det"], c["thing"], c["thing"], c["end"]]
    word_theme = [-1, -1, 0, 1, -1]
    states = ["det_s", "det_o", "thing", "end"]
    state_class = [c["det"], c["det"], c["thing"], c["end"]]
    class_words = [[i for i, wc in enumerate(word_class) if wc == k] for k in range(len(CLASSES))]
    emissions = [
        [rng.dirichlet(np.ones(len(class_words[sc]))).tolist() for sc in state_class]
        for _ in range(2)
    ]
    transitions = rng.dirichlet(np.ones(4), size=4)
    allowed = np.zeros((len(CLASSES), len(CLASSES)), dtype=bool)
    allowed[c["det"], c["thing"]] = allowed[c["thing"], c["end"]] = True
    allowed[c["end"], c["det"]] = True
    start_allowed = np.zeros(len(CLASSES), dtype=bool)
    start_allowed[c["det"]] = True
    return Oracle(
        words=words,
        word_class=word_class,
        word_theme=word_theme,
        themes=["sea", "farm"],
        topics=[0, 1],
        prior=[0.3, 0.7],
        states=states,
        state_class=state_class,
        start=rng.dirichlet(np.ones(4)).tolist(),
        transitions=transitions.tolist(),
        allowed=allowed.tolist(),
        start_allowed=start_allowed.tolist(),
        class_words=class_words,
        emissions=emissions,
        config={},
    )


def _brute_force_prob(o: Oracle, words: tuple[str, ...]) -> float:
    """p(words) = sum over topics and every state path of the product of the factors."""
    ids = [o.index[w] for w in words]
    total = 0.0
    for z in range(o.num_topics):
        for path in itertools.product(range(len(o.states)), repeat=len(ids)):
            p = o.prior[z] * o.start[path[0]]
            for t, (s, w) in enumerate(zip(path, ids, strict=True)):
                if t > 0:
                    p *= o.transitions[path[t - 1], s]
                cls_words = o.class_words[o.state_class[s]].tolist()
                p *= o.emissions[z][s][cls_words.index(w)] if w in cls_words else 0.0
            total += p
    return total


@pytest.mark.parametrize("length", [3, 4])
def test_probabilities_sum_to_one_and_match_brute_force(length):
    o = _small_oracle()
    seqs = list(itertools.product(o.words, repeat=length))
    score = o.score([list(s) for s in seqs])
    probs = np.exp(-score.nll)
    assert probs.sum() == pytest.approx(1.0, abs=1e-12)
    brute = np.asarray([_brute_force_prob(o, s) for s in seqs])
    np.testing.assert_allclose(probs, brute, rtol=1e-10, atol=0)
    # the posterior is Bayes' rule on the same per-topic terms
    assert np.allclose(score.posterior.sum(axis=1), 1.0)


def test_sample_frequencies_match_the_probabilities():
    o = _small_oracle(seed=1)
    length, n = 3, 40000
    seqs = list(itertools.product(o.words, repeat=length))
    expected = np.exp(-o.score([list(s) for s in seqs]).nll) * n
    drawn = o.sample_documents(n, length=length, seed=0)
    where = {s: i for i, s in enumerate(seqs)}
    observed = np.bincount([where[tuple(d)] for d in drawn], minlength=len(seqs))
    # pool the cells expected fewer than 5 times into one (the chi-square rule of thumb)
    small = expected < 5
    exp_ = np.append(expected[~small], expected[small].sum())
    obs = np.append(observed[~small], observed[small].sum())
    stat = float(((obs - exp_) ** 2 / exp_).sum())
    dof = len(exp_) - 1
    try:
        from scipy.stats import chi2

        assert chi2.sf(stat, dof) > 1e-3, (stat, dof)
    except ImportError:  # Wilson-Hilferty: the 99.9 % quantile of chi-square(dof)
        crit = dof * (1 - 2 / (9 * dof) + 3.09 * (2 / (9 * dof)) ** 0.5) ** 3
        assert stat < crit, (stat, dof)


# ----------------------------------------------------------------------------- the real process


@pytest.fixture(scope="module")
def default_oracle():
    return build_oracle(OracleConfig())


def test_lexicon_is_real_disjoint_bert_words(default_oracle):
    o = default_oracle
    assert set(o.words) <= bert_whole_words()
    assert len(set(o.words)) == len(o.words) == o.vocab_size
    # every theme has a lexicon for every topic class
    topic_classes = {CLASSES.index(c) for c in ("agent", "thing", "place", "verb_t", "adj")}
    for t in range(len(o.themes)):
        assert topic_classes <= set(o.word_class[o.word_theme == t].tolist())


def test_design_target_entropy_rate_below_forty_percent_of_unigram(default_oracle):
    """The issue's first design target, on a small sample (the report uses 10,000)."""
    docs = default_oracle.sample_documents(1000, length=126, seed=5)
    score = default_oracle.score(docs)
    h = score.nll_per_word.mean()
    assert h <= 0.4 * unigram_entropy(docs)
    assert score.oov.sum() == 0
    assert score.purity.mean() > 0.99  # the floor lets a few off-topic words through


def test_same_seed_same_process_and_samples_other_seed_other():
    a, b, c = (build_oracle(dataclasses.replace(TINY_ORACLE, seed=s)) for s in (3, 3, 4))
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert a.sample_documents(5, length=20, seed=1) == b.sample_documents(5, length=20, seed=1)
    assert a.sample_documents(5, length=20, seed=1) != a.sample_documents(5, length=20, seed=2)


def test_rule_breaks_and_oov_are_counted_not_dropped(default_oracle):
    o = default_oracle
    good = "the sailor hauled the net .".split()
    swapped = "the sailor hauled the bucket .".split()  # a farm thing in a sea sentence
    broken = "the . sailor hauled the net".split()  # det -> end, end -> agent
    oov = "the sailor hauled the zzyzx .".split()
    s = o.score([good, swapped, broken, oov])
    assert s.bad_transitions.tolist() == [0, 0, 2, 0]
    assert s.off_topic.tolist() == [0, 1, 0, 0]
    assert s.content_words.tolist() == [3, 3, 3, 2]
    assert s.oov.tolist() == [0, 0, 0, 1]
    assert s.num_words.tolist() == [6, 6, 6, 6]
    assert np.all(np.isfinite(s.nll))
    assert s.nll[0] < s.nll[1] and s.nll[0] < s.nll[2]
    # an OOV word costs about what the least likely word of its class costs (floor alone)
    things = [w for w in o.words if CLASSES[o.word_class[o.index[w]]] == "thing"]
    substituted = o.score([oov[:4] + [w] + oov[5:] for w in things]).nll
    assert s.nll[3] > substituted.min() + 5
    assert s.nll[3] == pytest.approx(substituted.max(), abs=0.01)
    # BOS/EOS at the ends are separators; one inside is a word, counted as OOV
    assert words_of("<|endoftext|> the net .<|endoftext|>") == ["the", "net", "."]
    assert words_of(" the<|endoftext|> net") == ["the", "<|endoftext|>", "net"]


def test_save_load_is_exact_and_tampering_is_caught(tmp_path, default_oracle):
    o = default_oracle
    o.save(tmp_path / ORACLE_FILE)
    back = load_oracle(tmp_path)
    docs = o.sample_documents(20, length=30, seed=0)
    assert back.fingerprint == o.fingerprint
    np.testing.assert_array_equal(back.score(docs).nll, o.score(docs).nll)
    raw = json.loads((tmp_path / ORACLE_FILE).read_text())
    raw["params"]["prior"][0] += 1e-9
    raw["params"]["prior"][1] -= 1e-9
    (tmp_path / ORACLE_FILE).write_text(json.dumps(raw))
    with pytest.raises(DiladiffError, match="fingerprint"):
        load_oracle(tmp_path)
    with pytest.raises(DiladiffError, match="not an oracle corpus"):
        load_oracle(tmp_path / "elsewhere")


# ----------------------------------------------------------------------------- prepare


def _oracle_cfg(out: Path, **oracle) -> DataConfig:
    return DataConfig(
        corpus=CorpusConfig(
            source="oracle",
            valid_fraction=0.25,
            oracle=dataclasses.replace(TINY_ORACLE, **oracle),
        ),
        tokenizer=TokenizerConfig(vocab_size=TINY_VOCAB),
        seq_len=16,
        out=str(out),
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("oracle")
    return {
        name: prepare(_oracle_cfg(root / name, seed=seed))
        for name, seed in (("a", 3), ("b", 3), ("c", 4))
    }


def _all_blocks(out: str, split: str) -> np.ndarray:
    blocks = load_blocks(out, split)
    return blocks.tokens(np.arange(len(blocks))).numpy()  # (N, L)


def test_prepare_puts_one_document_in_each_block(prepared):
    from transformers import AutoTokenizer

    info = prepared["a"]
    oracle = load_oracle(info.out_dir)
    tok = AutoTokenizer.from_pretrained(info.tokenizer_dir)
    docs = oracle.sample_documents(40, length=14, seed=[3, 1])  # what prepare drew
    assert (info.num_train_blocks, info.num_valid_blocks) == (30, 10)
    for split, want in (("train", docs[:30]), ("valid", docs[30:])):
        blocks = _all_blocks(info.out_dir, split)
        assert np.all(blocks[:, 0] == info.bos_id) and np.all(blocks[:, -1] == info.eos_id)
        assert not np.any(blocks[:, 1:-1] == info.eos_id)  # no document boundary inside
        texts = data.decode_blocks(tok, blocks)
        assert [words_of(t) for t in texts] == want  # one token per word, in order


def test_scoring_survives_the_tokenizer_round_trip(prepared):
    from transformers import AutoTokenizer

    info = prepared["a"]
    oracle = load_oracle(info.out_dir)
    tok = AutoTokenizer.from_pretrained(info.tokenizer_dir)
    ids = tok([f" {w}" for w in oracle.words], add_special_tokens=False)["input_ids"]
    assert all(len(i) == 1 for i in ids)  # every word of the vocabulary is one token
    docs = oracle.sample_documents(50, length=60, seed=9)
    tokens = tok([text_of(d) for d in docs], add_special_tokens=False)["input_ids"]
    assert all(len(t) == 60 for t in tokens)
    back = [words_of(t) for t in tok.batch_decode(tokens, clean_up_tokenization_spaces=False)]
    assert back == docs
    np.testing.assert_array_equal(oracle.score(back).nll, oracle.score(docs).nll)


def test_same_seed_same_corpus_other_seed_other(prepared):
    a, b, c = (prepared[k] for k in "abc")
    for split in ("train", "valid"):
        assert np.array_equal(_all_blocks(a.out_dir, split), _all_blocks(b.out_dir, split))
        assert not np.array_equal(_all_blocks(a.out_dir, split), _all_blocks(c.out_dir, split))
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert load_oracle(a.out_dir).fingerprint == load_oracle(b.out_dir).fingerprint
    assert load_oracle(a.out_dir).fingerprint != load_oracle(c.out_dir).fingerprint
    # the tokenizer depends on the lexicon only
    assert (Path(a.tokenizer_dir) / "tokenizer.json").read_bytes() == (
        Path(c.tokenizer_dir) / "tokenizer.json"
    ).read_bytes()


def test_wrong_vocab_size_is_a_one_line_error_naming_the_right_one(tmp_path):
    cfg = dataclasses.replace(_oracle_cfg(tmp_path / "d"), tokenizer=TokenizerConfig())
    with pytest.raises(DiladiffError, match=f"exactly {TINY_VOCAB} tokens") as err:
        prepare(cfg)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "d").exists()


def test_other_sources_ignore_the_oracle_settings(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("one document\n\nanother one\n")
    cfgs = [
        DataConfig(corpus=CorpusConfig(source=str(corpus), oracle=OracleConfig(seed=s)))
        for s in (0, 1)
    ]
    resolved = data._resolve_corpus(cfgs[0].corpus)
    assert data._fingerprint(cfgs[0], resolved, None) == data._fingerprint(cfgs[1], resolved, None)


@pytest.mark.parametrize(("name", "seq_len"), [("default", 32), ("l128", 128)])
def test_the_oracle_recipes_prepare_in_seconds(tmp_path, name, seq_len):
    recipe = load_recipe(
        ROOT / "recipes" / "oracle" / f"{name}.yaml",
        [f"data.out={tmp_path / 'data'}", "data.corpus.oracle.num_documents=60"],
    )
    assert recipe.data.tokenizer.vocab_size == recipe.mdlm.model.vocab_size
    info = prepare(recipe.data)
    assert info.vocab_size == recipe.mdlm.model.vocab_size
    assert info.num_train_blocks + info.num_valid_blocks == 60
    assert load_data_info(info.out_dir).seq_len == seq_len == recipe.mdlm.model.max_len
    blocks = _all_blocks(info.out_dir, "train")
    assert not np.any(blocks[:, 1:-1] == info.eos_id)
    assert load_oracle(info.out_dir).fingerprint in info.corpus


# ----------------------------------------------------------------------------- eval


def _sample_file(path: Path, blocks: np.ndarray, fingerprint: str | None) -> Path:
    """A sample file of given blocks, as `diladiff sample` writes one."""
    path.write_text("".join(json.dumps({"tokens": b.tolist()}) + "\n" for b in blocks))
    timing = {
        "forward_passes_discrete": 8.0, "tokens_per_forward": 16.0, "seconds_per_sample": 0.1,
        "seconds_total": 0.1 * len(blocks),
    }  # fmt: skip
    meta = {"model": "mdlm", "timing": timing, "data_fingerprint": fingerprint}
    path.with_name(path.stem + ".meta.json").write_text(json.dumps(meta))
    return path


def _oracle_eval(data_dir: str) -> object:
    import torch

    from diladiff_cli.config import EvalConfig, MauveConfig, ScorerConfig
    from diladiff_cli.evaluate import Evaluator

    cfg = EvalConfig(
        scorer=ScorerConfig(name="oracle"), mauve=MauveConfig(enabled=False), num_references=4
    )
    return Evaluator(cfg=cfg, data_dir=data_dir, device=torch.device("cpu"))


def test_eval_with_the_oracle_scorer_is_exact_and_counts_an_inner_eos(prepared, tmp_path):
    info = prepared["a"]
    oracle = load_oracle(info.out_dir)
    blocks = _all_blocks(info.out_dir, "valid")[:4].copy()
    evaluator = _oracle_eval(info.out_dir)
    record = evaluator.evaluate(_sample_file(tmp_path / "s.jsonl", blocks, info.fingerprint))
    words = evaluator.oracle_words(blocks)
    assert [len(w) for w in words] == [14] * 4  # BOS / EOS are not words
    want = oracle.measure(words)
    assert record.oracle == want and record.oracle.oov == 0
    assert record.genppl == pytest.approx(want.ppl) and record.genppl_tokens == 4 * 14
    assert record.reference_oracle is not None and record.reference_oracle.num_sequences == 4
    blocks[0, 5] = info.eos_id  # an end of document inside a block: counted, not dropped
    broken = evaluator.evaluate(_sample_file(tmp_path / "b.jsonl", blocks, info.fingerprint))
    assert broken.oracle.oov == 1 and broken.oracle.texts_with_oov == 1
    assert broken.oracle.nll_per_token > record.oracle.nll_per_token


def test_eval_refuses_samples_of_another_oracle_seed_or_corpus(prepared, tmp_path):
    info, other = prepared["a"], prepared["c"]  # seeds 3 and 4: same tokenizer
    blocks = _all_blocks(info.out_dir, "valid")[:2]
    evaluator = _oracle_eval(info.out_dir)
    for fingerprint in (other.fingerprint, None):
        path = _sample_file(tmp_path / "x.jsonl", blocks, fingerprint)
        with pytest.raises(DiladiffError, match="other data") as err:
            evaluator.evaluate(path)
        assert "\n" not in str(err.value)
    plain = tmp_path / "plain"  # the same blocks without the process beside them
    shutil.copytree(info.out_dir, plain)
    (plain / "oracle.json").unlink()
    with pytest.raises(DiladiffError, match="not an oracle corpus"):
        _oracle_eval(str(plain))


def test_measures_catch_samples_that_collapse_onto_one_topic(default_oracle):
    docs = default_oracle.sample_documents(400, length=30, seed=5)
    spread = default_oracle.measure(docs)
    post = default_oracle.score(docs).posterior
    one = [d for d, p in zip(docs, post, strict=True) if p.argmax() == 0]
    collapsed = default_oracle.measure(one)
    assert spread.topic_kl < 0.05 < math.log(default_oracle.num_topics) - 0.2 < collapsed.topic_kl
    assert spread.nll_per_token_se > 0 and abs(sum(spread.topic_share) - 1) < 1e-9
