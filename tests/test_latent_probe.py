"""What the latent carries (diladiff_cli.analysis.latent_probe): the linear probes on
synthetic latents, the oracle's labels, and the per-block NELBO of a tiny autoencoder
and bound on a tiny oracle corpus. Offline, CPU, seconds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from _ae_tiny import ae_config, build_bert, build_mdlm

from diladiff_cli.ae import load_autoencoder, train_ae
from diladiff_cli.analysis.latent_probe import (
    BlockLabels,
    block_labels,
    block_nelbos,
    compare_nelbo,
    probe_latents,
    ridge_probe,
    scene_table,
)
from diladiff_cli.config import EncoderConfig
from diladiff_cli.config.data import CorpusConfig, DataConfig, OracleConfig, TokenizerConfig
from diladiff_cli.config.stages import ORACLE_TOPIC
from diladiff_cli.data import prepare
from diladiff_cli.distributed import init_runtime
from diladiff_cli.encoder import OracleTopicBlocks
from diladiff_cli.mdlm import load_mdlm
from diladiff_cli.oracle import CLASSES, TOPIC_CLASSES, load_oracle, text_of
from diladiff_cli.structs import to_dict
from diladiff_cli.train import evaluate

CPU = torch.device("cpu")


def _synthetic(n: int, *, seed: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Latents ``(n, 4, 4)``, a label linearly encoded in them, and a random label."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 4, 4, generator=g)
    readout = torch.randn(16, 3, generator=torch.Generator().manual_seed(99))  # shared
    linear = (z.flatten(1) @ readout).argmax(1).numpy()
    rng = np.random.default_rng(seed)
    return z, linear, rng.integers(0, 3, size=n)


def test_the_probe_reads_a_linear_label_and_not_a_random_one():
    z_tr, lin_tr, rnd_tr = _synthetic(600, seed=0)
    z_te, lin_te, rnd_te = _synthetic(400, seed=1)
    x_tr, x_te = z_tr.flatten(1), z_te.flatten(1)
    lin = ridge_probe(x_tr, lin_tr, x_te, lin_te, num_classes=3)
    assert lin.accuracy.mean > 0.9 and lin.baseline.mean < 0.5
    assert lin.positions == 1 and lin.accuracy.n == 400
    rnd = ridge_probe(x_tr, rnd_tr, x_te, rnd_te, num_classes=3)
    assert abs(rnd.accuracy.mean - 1 / 3) < 4 * rnd.accuracy.se + 0.02


def test_a_per_position_probe_ignores_missing_labels():
    z_tr, lin_tr, _ = _synthetic(600, seed=0)
    z_te, lin_te, rnd_te = _synthetic(400, seed=1)
    # position 0: the linear label; position 1: random; position 2: never labelled
    y_tr = np.stack([lin_tr, np.random.default_rng(5).integers(0, 3, 600), -np.ones(600, int)], 1)
    y_te = np.stack([lin_te, rnd_te, -np.ones(400, int)], 1)
    res = ridge_probe(z_tr.flatten(1), y_tr, z_te.flatten(1), y_te, num_classes=3)
    assert res.positions == 3 and res.per_position[0] > 0.9
    assert res.per_position[1] < 0.5 and np.isnan(res.per_position[2])
    # a block's accuracy is the mean over its two labelled positions
    assert res.accuracy.mean == pytest.approx(np.mean(res.per_position[:2]), abs=1e-9)


@pytest.fixture(scope="module")
def oracle_env(tmp_path_factory) -> dict:
    """A tiny oracle corpus (4 topics, 30-word documents), a random base MDLM, a 3-step
    autoencoder (random 2-layer BERT) and a 3-step bound."""
    root = tmp_path_factory.mktemp("probe")
    data = DataConfig(
        corpus=CorpusConfig(
            source="oracle",
            valid_fraction=0.25,
            oracle=OracleConfig(num_documents=40, num_topics=4, seed=3),
        ),
        tokenizer=TokenizerConfig(vocab_size=1650),
        seq_len=32,
        out=str(root / "data"),
    )
    info = prepare(data)
    base = build_mdlm(root / "mdlm.pt", info, data.out)
    runtime = init_runtime("cpu")
    ae = ae_config(base=base, bert=build_bert(root), out=root / "ae.pt")
    bound = dataclasses.replace(
        ae, out=str(root / "bound.pt"), encoder=EncoderConfig(name=ORACLE_TOPIC, max_len=48)
    )
    for cfg in (ae, bound):
        train_ae(cfg=cfg, data=data, stage_config=to_dict(cfg), runtime=runtime)
    return {
        "data": data.out,
        "ae": load_autoencoder(root / "ae.pt", device=CPU),
        "bound": load_autoencoder(root / "bound.pt", device=CPU),
        "mdlm": load_mdlm(base, device=CPU),
        "oracle": load_oracle(data.out),
    }


def test_block_nelbos_match_evaluate_on_full_batches(oracle_env):
    """With whole batches of 32 the per-block mean is ``train.evaluate``'s NELBO."""
    ae = oracle_env["ae"]
    data = ae.blocks(oracle_env["data"], "train")  # 30 blocks: repeat them to fill 32
    objective = ae.objective()

    class Cycled:
        def __len__(self) -> int:
            return 32

        def batch(self, idx):
            return data.batch(np.asarray(idx) % len(data))

    per = block_nelbos(ae.model, objective, Cycled(), np.arange(32), seed=1)
    whole = evaluate(
        model=ae.model, objective=objective, data=Cycled(), batch_size=32, batches=1, seed=1,
        runtime=init_runtime("cpu"), precision="fp32",
    )  # fmt: skip
    assert per["nelbo"].mean() == pytest.approx(whole["nelbo"], rel=1e-5)
    assert per["nelbo_null"].mean() == pytest.approx(whole["nelbo_null"], rel=1e-5)


def test_another_blocks_topic_is_its_own_when_the_topics_agree(oracle_env):
    bound, oracle = oracle_env["bound"], oracle_env["oracle"]
    data = OracleTopicBlocks(
        data_dir=oracle_env["data"],
        split="valid",
        decoder_tokenizer=bound.decoder_tokenizer,
        oracle=oracle,
    )
    idx = np.arange(len(data))
    other = np.roll(idx, -1)
    objective = bound.objective()
    own = block_nelbos(bound.model, objective, data, idx)["nelbo"]
    swap = block_nelbos(bound.model, objective, data, idx, other=other)["nelbo"]
    same = data.topics(idx) == data.topics(other)
    assert same.any() and not same.all()
    np.testing.assert_allclose(own[same], swap[same], rtol=1e-6)
    assert not np.allclose(own[~same], swap[~same])


def test_compare_nelbo_runs_on_a_tiny_autoencoder(oracle_env):
    e = oracle_env
    res = compare_nelbo(e["ae"], e["bound"], e["mdlm"], e["oracle"], data_dir=e["data"], blocks=8)
    assert res.blocks == 8 and set(res.nelbo) == {
        "ae_z", "ae_null", "ae_other_z", "bound_topic", "bound_null", "bound_other_topic", "mdlm",
    }  # fmt: skip
    for est in res.nelbo.values():
        assert est.n == 8 and np.isfinite(est.mean) and est.se > 0
    # nearly untrained decoders: about ln(V) per masked token, weighted by 1/t
    assert 0 < res.nelbo["mdlm"].mean < 3 * np.log(1650)
    diff = res.differences["ae_null - ae_z"]
    assert diff.mean == pytest.approx(res.nelbo["ae_null"].mean - res.nelbo["ae_z"].mean)
    assert 0 <= res.other_same_topic <= 1


def test_block_labels_read_the_oracle(oracle_env):
    oracle = oracle_env["oracle"]
    docs = oracle.sample_documents(20, length=30, seed=11)
    labels = block_labels(oracle, [text_of(d) for d in docs])
    assert isinstance(labels, BlockLabels)
    assert labels.topic.shape == (20,) and labels.word_class.shape == (20, 30)
    assert labels.word_class[3, 5] == oracle.word_class[oracle.index[docs[3][5]]]
    content = np.isin(labels.word_class, [CLASSES.index(c) for c in TOPIC_CLASSES])
    assert (labels.scene[~content] == -1).all()  # shared words have no scene
    assert (labels.scene[content] >= -1).all() and labels.scene.max() == 1
    assert (labels.bag.sum(1) > 0).all()
    table = scene_table(oracle)
    assert table.shape == (oracle.num_topics, oracle.vocab_size)


def test_probe_latents_reads_the_topic_off_topic_latents(oracle_env):
    """Latents that hold the topic (its one-hot plus noise): the topic probe is exact,
    the word-class probe no better than its baseline."""
    oracle = oracle_env["oracle"]

    def latents(n: int, seed: int) -> tuple[torch.Tensor, BlockLabels]:
        docs = oracle.sample_documents(n, length=30, seed=seed)
        labels = block_labels(oracle, [text_of(d) for d in docs])
        z = torch.randn(n, 2, 4, generator=torch.Generator().manual_seed(seed)) * 0.1
        z[:, 0] += torch.nn.functional.one_hot(torch.from_numpy(labels.topic), 4).float()
        return z, labels

    z_tr, l_tr = latents(300, 0)
    z_te, l_te = latents(200, 1)
    res = probe_latents(z_tr, l_tr, z_te, l_te, num_topics=4, num_scenes=2)
    assert res["topic"].accuracy.mean == 1.0
    wc = res["word_class"]
    assert wc.accuracy.mean < wc.baseline.mean + 3 * wc.accuracy.se + 0.03
    bag = res["bag"]
    assert bag.recall.mean == pytest.approx(bag.baseline_topic.mean, abs=0.05)
    assert bag.recall.mean > bag.baseline_frequency.mean


def test_probe_markdown_renders_a_record(tmp_path: Path):
    # the script's record: a smoke test of the table writer on a minimal record
    from diladiff_cli.analysis.latent_probe import probe_markdown

    e = {"mean": 1.0, "se": 0.1, "n": 4}
    record = {
        "command": "python scripts/latent_probe.py",
        "nelbo": {"blocks": 4, "other_same_topic": 0.25, "nelbo": {"ae_z": e}, "differences": {}},
        "probes": {
            "settings": {"method": "ridge", "train_blocks": 8, "test_blocks": 4},
            "results": {
                "topic": {
                    "num_classes": 4,
                    "positions": 1,
                    "accuracy": e,
                    "baseline": e,
                    "train_accuracy": 1.0,
                    "ridge": 0.1,
                }  # fmt: skip
            },
        },
    }
    md = probe_markdown(record)
    assert "| autoencoder | encoder's z | 1.000 ± 0.100 |" in md and "| topic | 4 |" in md
    assert "Decodes of the encoder's z" not in md  # the script ran without --decode-ndisc
    low = {"mean": 0.5, "se": 0.05, "n": 3}
    row = {"ndisc": 4, "tokens_per_pass": 16.0, "z": {"nll": low, "purity": e},
           "null": {"nll": e, "purity": low}}  # fmt: skip
    record["decodes"] = {"blocks": 8, "seeds": [0, 1, 2], "rows": [row]}
    md = probe_markdown(record)
    assert "| 4 | 16 | 0.500 ± 0.050 | 1.000 ± 0.100 | 1.000 ± 0.100 | 0.500 ± 0.050 |" in md
