"""Experiment 1 (diladiff_cli.analysis.latent_analysis): the standard errors over the
held-out blocks and, on an oracle corpus, the exact topic measures of the latent-noise
analysis, with the encoder, the decoder and BERTScore replaced by stand-ins whose answers
are known; and the analysis.md tables with and without the new columns."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diladiff_cli.analysis import latent_analysis as la
from diladiff_cli.config.data import OracleConfig
from diladiff_cli.oracle import build_oracle, text_of

BLOCKS = 12


@pytest.fixture(scope="module")
def oracle():
    return build_oracle(OracleConfig(num_documents=40, num_topics=4, seed=3))


def test_measured_is_over_the_blocks_with_ddof_one():
    three = la.measured("x", np.array([1.0, 2.0, 3.0], dtype=np.float32))
    assert three == {"x": pytest.approx(2.0), "x_se": pytest.approx(1.0 / math.sqrt(3))}
    assert all(type(v) is float for v in three.values())  # plain floats: JSON-ready
    assert la.measured("x", np.array([5.0])) == {"x": 5.0, "x_se": None}  # one block: no SE
    assert la.measured("x", np.array([0.0, 1.0])) == {"x": 0.5, "x_se": pytest.approx(0.5)}


def test_topics_of_texts_and_a_decode_without_a_topic(oracle):
    docs = oracle.sample_documents(8, length=64, seed=0)
    topics = la.topics_of(oracle, [text_of(d) for d in docs] + ["", " zzz qqq"])
    assert topics[:8].tolist() == oracle.score(docs).posterior.argmax(1).tolist()
    assert topics[8:].tolist() == [-1, -1]  # no words, or none the oracle knows: a tie
    same = la.same_topic(np.array([0, 1, -1, 2]), np.array([0, 2, -1, 2]))
    assert same.tolist() == [1.0, 0.0, 0.0, 1.0]  # no topic matches nothing, itself included


def _stand_ins(monkeypatch, refs: list[str]) -> None:
    """Block i's latent is the number 10 i; the decoder reads a latent back as the text of
    the nearest block (the empty text when the latent is far from every block's), the same
    for every seed; BERTScore is 1 for equal texts, 0 otherwise."""

    def texts_of(ae, z):
        out = []
        for v in z[:, 0, 0].tolist():
            k = round(v / 10)
            out.append(refs[k] if 0 <= k < len(refs) and abs(v / 10 - k) < 0.25 else "")
        return out

    monkeypatch.setattr(
        la, "encode_blocks", lambda ae, data, n: 10.0 * torch.arange(n)[:, None, None].float()
    )
    monkeypatch.setattr(la, "decode_batches", lambda ae, z, **kw: z)
    monkeypatch.setattr(la, "texts_of", texts_of)
    monkeypatch.setattr(
        la,
        "bertscores",
        lambda c, r, layers, device: np.array([float(a == b) for a, b in zip(c, r, strict=True)]),
    )


@pytest.mark.parametrize("exact", [True, False])
def test_latent_noise_table_records_standard_errors_and_topic_shares(monkeypatch, oracle, exact):
    refs = [text_of(d) for d in oracle.sample_documents(BLOCKS, length=64, seed=1)]
    _stand_ins(monkeypatch, refs)
    data = SimpleNamespace(texts=lambda idx: [refs[i] for i in idx])
    a = la.latent_noise_table(
        None, data, blocks=BLOCKS, layers=6, seed=0, oracle=oracle if exact else None,
        progress=lambda line: None,
    )  # fmt: skip
    first, last = a["curve"][0], a["curve"][-1]
    assert [c["t"] for c in a["curve"]] == list(la.NOISE_LEVELS)
    # t = 0 decodes every block exactly: 1 in every block, so no spread
    assert first["vs_t0_decode"] == first["vs_ground_truth"] == 1.0
    assert first["vs_t0_decode_se"] == first["vs_ground_truth_se"] == 0.0
    # t = 1 is pure noise (|noise| < 2.5 decodes block 0): block 0 alone is kept
    assert last["vs_ground_truth"] == pytest.approx(1 / BLOCKS)
    assert last["vs_ground_truth_se"] == pytest.approx(math.sqrt(1 / BLOCKS / BLOCKS))
    # the two seeds decode the same: the intra-pool is 1; neighbours differ: inter-pool 0
    assert (a["intra_pool"], a["intra_pool_se"]) == (1.0, 0.0)
    assert (a["inter_pool"], a["inter_pool_se"]) == (0.0, 0.0)
    assert "ground_truth_vs_other_block_se" in a
    topic_keys = ("topic_kept", "intra_pool_same_topic", "inter_pool_same_topic")
    if not exact:  # not an oracle corpus: the exact columns are absent
        assert not any(k in a or k in first for k in topic_keys)
        return
    truth = la.topics_of(oracle, refs)
    assert (first["topic_kept"], first["topic_kept_se"]) == (1.0, 0.0)
    # pure noise decodes block 0's text: its topic is kept where a block shares it
    kept = (truth == truth[0]).astype(float)
    assert last["topic_kept"] == pytest.approx(kept.mean())
    assert last["topic_kept_se"] == pytest.approx(kept.std(ddof=1) / math.sqrt(BLOCKS))
    assert a["intra_pool_same_topic"] == 1.0
    neighbours = (np.roll(truth, -1) == truth).astype(float).mean()
    assert a["inter_pool_same_topic"] == a["ground_truth_same_topic"] == pytest.approx(neighbours)


def _record(latent_analysis: dict) -> dict:
    settings = dict(checkpoint="ae.pt", ae_step=1, mdlm="mdlm.pt", mdlm_step=1, encoder="minilm",
                    latent_shape=[4, 8], latent_norm="stats", device="cpu", blocks=4,
                    bertscore_layers=6)  # fmt: skip
    return {
        "settings": settings, "commands": ["c"], "timing": {}, "reconstruction": [],
        "nelbo": {"z": 2.0, "null": 3.0, "mdlm": 3.0, "blocks": 32},
        "latent_analysis": latent_analysis,
    }  # fmt: skip


def test_markdown_shows_the_standard_errors_and_the_topic_columns_when_recorded():
    curve = [{"t": 0.0, "vs_t0_decode": 1.0, "vs_t0_decode_se": 0.0, "vs_ground_truth": 0.7,
              "vs_ground_truth_se": 0.02, "topic_kept": 0.9, "topic_kept_se": 0.05}]  # fmt: skip
    pools = {k: 0.5 for k in ("intra_pool", "inter_pool", "ground_truth_vs_other_block",
                              "intra_pool_same_topic", "inter_pool_same_topic",
                              "ground_truth_same_topic")}  # fmt: skip
    pools |= {f"{k}_se": 0.01 for k in pools}
    md = la.latent_analysis_markdown(
        _record({"blocks": 4, "ndisc": 8, "selection": "random", "curve": curve, **pools})
    )
    assert "| t | vs t = 0 decode | vs ground truth | topic kept |" in md
    assert "| 0.00 | 1.000 ± 0.000 | 0.700 ± 0.020 | 0.900 ± 0.050 |" in md
    assert "| intra-pool: same latent, two seeds | 0.500 ± 0.010 | 0.500 ± 0.010 |" in md
    # a record written before the standard errors and the topics still renders
    old = {"blocks": 4, "ndisc": 8, "selection": "random", "intra_pool": 0.6, "inter_pool": 0.4,
           "ground_truth_vs_other_block": 0.3,
           "curve": [{"t": 0.0, "vs_t0_decode": 1.0, "vs_ground_truth": 0.7}]}  # fmt: skip
    md = la.latent_analysis_markdown(_record(old))
    assert "| 0.00 | 1.000 | 0.700 |" in md and "topic kept" not in md
