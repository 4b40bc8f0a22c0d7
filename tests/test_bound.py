"""The perfect-latent bound on the oracle corpus: the autoencoder's decoder conditioned on
the true document topic (``ae.encoder.name: oracle-topic``), trained by `train-ae` and
sampled by ``generate(model="bound")``. Offline, CPU, seconds."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _ae_tiny import ae_config, build_data, build_mdlm

from diladiff_cli.ae import load_autoencoder, train_ae
from diladiff_cli.checkpoint import read_meta
from diladiff_cli.config import EncoderConfig
from diladiff_cli.config.data import CorpusConfig, DataConfig, OracleConfig, TokenizerConfig
from diladiff_cli.config.stages import ORACLE_TOPIC
from diladiff_cli.data import load_data_info, prepare
from diladiff_cli.distributed import init_runtime
from diladiff_cli.encoder import OracleTopicBlocks, topic_states
from diladiff_cli.errors import DiladiffError
from diladiff_cli.hub import load_tokenizer
from diladiff_cli.oracle import load_oracle
from diladiff_cli.sample import SampleSettings, generate
from diladiff_cli.structs import to_dict

ORACLE = OracleConfig(num_documents=40, num_topics=4, seed=3)
VALID = 10  # 40 documents, valid_fraction 0.25
SEQ_LEN = 32  # _ae_tiny's MDLM context; 30 words a document: the posterior is sharp


@dataclasses.dataclass
class BoundEnv:
    root: Path
    data: DataConfig
    recipe: Path
    checkpoint: Path
    train_output: dict


def _cli(*args: str):
    from typer.testing import CliRunner

    from diladiff_cli.cli import app

    return CliRunner().invoke(app, list(args))


def _json(result) -> dict:
    assert result.exit_code == 0, (result.output + result.stderr)[-3000:]
    return json.loads(result.stdout[result.stdout.index("{") :])


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> BoundEnv:
    """An oracle corpus, a random base MDLM, and the bound trained by the CLI exactly as
    the docs say: the recipe's autoencoder with ``--set ae.encoder.name=oracle-topic``."""
    root = tmp_path_factory.mktemp("bound")
    data = DataConfig(
        corpus=CorpusConfig(source="oracle", valid_fraction=0.25, oracle=ORACLE),
        tokenizer=TokenizerConfig(vocab_size=1650),
        seq_len=SEQ_LEN,
        out=str(root / "data"),
    )
    info = prepare(data)
    base = build_mdlm(root / "mdlm.pt", info, data.out)
    ae = ae_config(base=base, bert=Path("minilm"), out=root / "ae.pt")  # never loaded
    recipe = {
        "name": "bound",
        "data": to_dict(data),
        "mdlm": {"model": {"vocab_size": info.vocab_size}, "train": {}},
        "ae": to_dict(ae),
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = root / "bound.pt"
    result = _cli(
        "train-ae", str(path), "--set", f"ae.encoder.name={ORACLE_TOPIC}", "--out", str(out),
        "--device", "cpu",
    )  # fmt: skip
    return BoundEnv(root=root, data=data, recipe=path, checkpoint=out, train_output=_json(result))


def _true_topics(oracle) -> np.ndarray:
    """The topics prepare drew: the first draw of ``sample_documents`` on the corpus's
    stream (seed, 1)."""
    rng = np.random.default_rng([ORACLE.seed, 1])
    return rng.choice(oracle.num_topics, size=ORACLE.num_documents, p=oracle.prior)


def test_topic_states_are_the_one_hot_of_the_true_topic(env):
    oracle = load_oracle(env.data.out)
    info = load_data_info(env.data.out)
    tokenizer = load_tokenizer(info.tokenizer_dir)
    truth = _true_topics(oracle)
    for split, want in (("train", truth[:-VALID]), ("valid", truth[-VALID:])):
        blocks = OracleTopicBlocks(
            data_dir=env.data.out, split=split, decoder_tokenizer=tokenizer, oracle=oracle
        )
        batch = blocks.batch(np.arange(len(blocks)))
        assert batch.states.shape == (len(want), 1, oracle.num_topics)
        assert batch.enc_mask.all() and batch.enc_mask.shape == (len(want), 1)
        expected = torch.nn.functional.one_hot(torch.from_numpy(want), oracle.num_topics)
        assert torch.equal(batch.states[:, 0], expected.float())
    assert len(set(truth.tolist())) == oracle.num_topics  # every topic is exercised


def test_train_ae_writes_the_bound_checkpoint(env):
    assert env.train_output["step"] == 3 and env.checkpoint.is_file()
    meta = read_meta(env.checkpoint)
    oracle = load_oracle(env.data.out)
    assert meta.stage == "ae" and meta.config["encoder"]["name"] == ORACLE_TOPIC
    assert meta.extra["encoder_hidden"] == oracle.num_topics
    assert meta.extra["bound"]["oracle_fingerprint"] == oracle.fingerprint
    assert meta.extra["latent_stats"]  # measured on the topic states like any autoencoder
    loaded = load_autoencoder(env.checkpoint, device=torch.device("cpu"))
    assert loaded.is_bound and loaded.model.state_mean.shape == (oracle.num_topics,)
    assert torch.allclose(loaded.model.state_mean, torch.full((4,), 0.25))  # the prior's
    with pytest.raises(DiladiffError, match="encodes no text"):
        loaded.blocks(env.data.out, "valid")


def test_the_decoder_conditions_on_the_topic(env):
    loaded = load_autoencoder(env.checkpoint, device=torch.device("cpu"))
    states, mask = topic_states(torch.tensor([0, 1]), num_topics=4)
    z = loaded.model.encode(states, mask)  # (2, N, D)
    assert not torch.allclose(z[0], z[1])
    tokens = torch.full((2, SEQ_LEN), loaded.mask_id)
    with torch.no_grad():
        logits = loaded.model.decode_logits(tokens, torch.zeros(2), z)  # (2, L, V)
    assert not torch.allclose(logits[0], logits[1])


def test_the_bound_latent_is_the_topic_at_full_scale(env):
    """z is a function of the topic alone, and topics differ at z's own scale: through
    the Perceiver compressor the one state was drowned by the latents' own (topics under
    1 % apart on the oracle default, 11 % here), and the decoder learnt to ignore it."""
    loaded = load_autoencoder(env.checkpoint, device=torch.device("cpu"))
    model = loaded.model
    topics = torch.tensor([0, 1, 2, 3, 0])
    states, mask = topic_states(topics, num_topics=4)
    h = (states - model.state_mean) / model.state_std
    with torch.no_grad():
        raw = model.raw_latents(states, mask)  # (5, N, D)
        again = model.compressor(h, mask)
    assert torch.equal(raw, again) and torch.equal(raw[0], raw[4])  # the topic only
    spread = raw[:4].std(dim=0).mean()  # between topics
    assert spread > 0.3 * raw[:4].abs().mean()


def test_a_bound_from_before_the_topic_embedding_is_refused_with_its_fix(env, tmp_path):
    from diladiff_cli.checkpoint import load_checkpoint, save_weights

    old = tmp_path / "old_bound.pt"
    tensors = load_checkpoint(env.checkpoint, stage="ae").tensors
    tensors["compressor.latents"] = torch.zeros(2, 2)  # the former Perceiver's
    save_weights(old, tensors, read_meta(env.checkpoint))
    with pytest.raises(DiladiffError, match="before its topic embedding.*train it again"):
        load_autoencoder(old, device=torch.device("cpu"))


def test_generate_bound_is_seeded_and_records_the_topics(env):
    settings = SampleSettings(num_samples=5, batch_size=2, ndisc=4, selection="confidence", seed=7)
    runtime = init_runtime("cpu")
    a = generate(model="bound", checkpoint=env.checkpoint, settings=settings, runtime=runtime)
    b = generate(model="bound", checkpoint=env.checkpoint, settings=settings, runtime=runtime)
    assert a.tokens.shape == (5, SEQ_LEN) and torch.equal(a.tokens, b.tokens)
    assert a.info["model"] == "bound" and a.info["topics"] == b.info["topics"]
    assert len(a.info["topics"]) == 5 and set(a.info["topics"]) <= set(range(4))
    info = load_data_info(env.data.out)
    assert a.info["data_fingerprint"] == info.fingerprint
    assert a.timing.forward_passes_latent == 1.0 and a.timing.seconds_latent > 0
    other = dataclasses.replace(settings, seed=8)
    c = generate(model="bound", checkpoint=env.checkpoint, settings=other, runtime=runtime)
    assert not torch.equal(a.tokens, c.tokens)


def test_cli_sample_bound_and_a_checkpoint_that_is_not_the_bound(env, tmp_path):
    out = tmp_path / "bound.jsonl"
    args = ("--model", "bound", "--ndisc", "4", "--num-samples", "2", "--batch-size", "2")
    done = _json(
        _cli(
            "sample", str(env.recipe), *args, "--checkpoint", str(env.checkpoint), "--out", str(out)
        )
    )
    meta = json.loads(Path(done["meta"]).read_text())
    assert meta["model"] == "bound" and len(meta["topics"]) == 2
    assert len(out.read_text().splitlines()) == 2
    missing = _cli("sample", str(env.recipe), *args)  # the recipe names no bound
    assert missing.exit_code == 1 and "--model bound needs" in missing.stderr
    wrong = _cli("sample", str(env.recipe), *args, "--checkpoint", str(env.root / "mdlm.pt"))
    assert wrong.exit_code == 1 and "Traceback" not in wrong.stderr
    assert wrong.stderr.strip().splitlines()[-1].startswith("error: --model bound samples")


def test_a_corpus_that_is_not_an_oracle_one_is_refused(tmp_path):
    data, info = build_data(tmp_path)  # a plain text corpus
    base = build_mdlm(tmp_path / "mdlm.pt", info, data.out)
    cfg = ae_config(base=base, bert=Path("minilm"), out=tmp_path / "bound.pt")
    cfg = dataclasses.replace(cfg, encoder=EncoderConfig(name=ORACLE_TOPIC))
    with pytest.raises(DiladiffError) as err:
        train_ae(cfg=cfg, data=data, stage_config=to_dict(cfg), runtime=init_runtime("cpu"))
    message = str(err.value)
    assert "\n" not in message and "needs an oracle corpus" in message
    assert not (tmp_path / "bound.pt").exists()
