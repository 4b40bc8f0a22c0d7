"""The autoregressive baseline (`sample --model ar`): the GenPPL judge drawing whole
blocks with its key-value cache, recorded and timed like the MDLM's samples, seeded
per batch without touching the caller's random stream. CPU, offline, seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _evalkit import SEQ_LEN, make_data, make_mdlm

from diladiff_cli.config import (
    EvalConfig,
    GridConfig,
    JudgeModelConfig,
    MauveConfig,
    ParetoConfig,
    ScorerConfig,
)
from diladiff_cli.data import load_data_info
from diladiff_cli.distributed import init_runtime
from diladiff_cli.errors import DiladiffError
from diladiff_cli.evaluate import BlockText
from diladiff_cli.hub import load_tokenizer
from diladiff_cli.judge import build_judge, export_judge
from diladiff_cli.pareto import Cell, expand_cells, resolve_checkpoints, run_sweep, sample_cell
from diladiff_cli.sample import SampleSettings, generate, meta_path, write_samples

SETTINGS = SampleSettings(num_samples=5, batch_size=2, ndisc=8, seed=3)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ar")
    data = make_data(root, docs=200)
    return {"root": root, "data": data, "judge": _judge(data, root / "judge")}


def _judge(data_dir: Path, out: Path) -> Path:
    """An untrained GPT-2 judge with the record `train-judge` writes."""
    info = load_data_info(data_dir)
    torch.manual_seed(0)
    model = build_judge(
        JudgeModelConfig(n_layer=1, n_embd=16, n_head=2, n_positions=32),
        vocab_size=info.vocab_size,
        bos_id=info.bos_id,
        eos_id=info.eos_id,
    )
    with torch.no_grad():  # EOS about one token in seven, as if documents were short
        model.transformer.ln_f.bias.fill_(1.0)
        model.lm_head.weight[info.eos_id] = 0.25
    record = {
        "valid_ppl": 42.0,
        "step": 7,
        "valid_tokens_per_block": info.seq_len - 1,
        "data_dir": str(Path(data_dir).resolve()),
        "data_fingerprint": info.fingerprint,
    }
    return export_judge(model, tokenizer_dir=info.tokenizer_dir, out=out, record=record)


def _sample(judge: Path, settings: SampleSettings = SETTINGS):
    return generate(model="ar", checkpoint=judge, settings=settings, runtime=init_runtime("cpu"))


def test_ar_record_is_a_whole_block_timed_one_token_per_pass(setup, tmp_path):
    info = load_data_info(setup["data"])
    result = _sample(setup["judge"])
    tokens = result.tokens
    assert tokens.shape == (5, SEQ_LEN) and (tokens[:, 0] == info.bos_id).all()
    assert int(tokens.max()) < info.vocab_size and not (tokens == info.mask_id).any()
    assert (tokens[:, 1:] == info.eos_id).any()  # EOS is drawn, never a stop
    t = result.timing
    assert t.forward_passes_discrete == SEQ_LEN - 1  # one pass per generated token
    assert t.tokens_per_forward == 1.0 and t.seconds_discrete > 0
    assert t.seconds_latent == 0 and t.latent_share == 0 and t.forward_passes_latent == 0
    assert t.seconds_total == t.seconds_discrete
    assert (result.settings.ndisc, result.settings.selection) == (None, None)
    info_rec = result.info
    assert info_rec["model"] == "ar" and info_rec["seq_len"] == SEQ_LEN
    assert info_rec["data_fingerprint"] == info.fingerprint and info_rec["checkpoint_step"] == 7

    out = tmp_path / "ar.jsonl"
    meta = json.loads(write_samples(result, out).read_text())
    assert meta["settings"]["ndisc"] is None and meta["settings"]["selection"] is None
    assert meta["timing"]["tokens_per_forward"] == 1.0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    data_tok = load_tokenizer(info.tokenizer_dir)
    for line, row in zip(lines, tokens.tolist(), strict=True):
        assert line["tokens"] == row
        assert line["text"] == data_tok.decode(row, skip_special_tokens=True)
    # eval's reading of a block (EOS policy) applies unchanged
    text = BlockText(
        tokenizer=data_tok, policy="strip", bos_id=info.bos_id, eos_id=info.eos_id,
        mask_id=info.mask_id,
    )  # fmt: skip
    assert len(text(tokens.tolist())[1]) == 5


def test_forward_passes_are_counted_not_claimed(setup, monkeypatch):
    from transformers import GPT2LMHeadModel

    calls = []
    real = GPT2LMHeadModel.forward
    monkeypatch.setattr(
        GPT2LMHeadModel, "forward", lambda self, *a, **k: calls.append(1) or real(self, *a, **k)
    )
    result = _sample(setup["judge"])
    assert len(calls) == 3 * (SEQ_LEN - 1)  # 3 batches (2 + 2 + 1), one pass per token
    assert result.timing.forward_passes_discrete == SEQ_LEN - 1


def test_ar_is_reproducible_per_seed_and_leaves_the_callers_rng_alone(setup):
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = _sample(setup["judge"])
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's stream is untouched
    again = _sample(setup["judge"])
    other = _sample(setup["judge"], SampleSettings(num_samples=5, batch_size=2, ndisc=8, seed=4))
    assert torch.equal(first.tokens, again.tokens) and first.texts == again.texts
    assert not torch.equal(first.tokens, other.tokens)
    assert not torch.equal(first.tokens[0], first.tokens[2])  # each batch its own seed
    # temperature and top-p reach the sampler: a tiny nucleus is greedy, whatever the seed
    nucleus = [
        SampleSettings(num_samples=4, batch_size=2, ndisc=8, seed=s, top_p=1e-6) for s in (3, 4)
    ]
    greedy = [_sample(setup["judge"], settings).tokens for settings in nucleus]
    assert torch.equal(greedy[0], greedy[1]) and torch.equal(greedy[0][0], greedy[0][3])
    sharp = _sample(setup["judge"], SampleSettings(num_samples=5, batch_size=2, ndisc=8,
                                                   seed=3, temperature=0.05))  # fmt: skip
    assert not torch.equal(sharp.tokens, first.tokens)


def test_ar_refuses_what_is_not_a_judge_directory(setup, tmp_path):
    mdlm = make_mdlm(setup["data"], tmp_path / "mdlm.pt")
    plain = tmp_path / "plain"
    plain.mkdir()
    for bad in (mdlm, plain, tmp_path / "missing"):
        with pytest.raises(DiladiffError, match="train-judge") as err:
            _sample(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(DiladiffError, match="--ndisc"):  # the others still need ndisc
        generate(
            model="mdlm", checkpoint=mdlm, runtime=init_runtime("cpu"),
            settings=SampleSettings(num_samples=1, batch_size=1, ndisc=None),
        )  # fmt: skip


def test_pareto_ar_cells_and_checkpoint(setup, tmp_path):
    cfg = ParetoConfig(
        grids=(
            GridConfig(models=("mdlm", "ar"), ndisc=(4, 8), ncont=(0, 5),
                       selection=("random", "confidence"), temperature=(0.5, 1.0)),
        )
    )  # fmt: skip
    cells = expand_cells(cfg)
    ar = [c for c in cells if c.model == "ar"]
    assert ar == [Cell("ar", 0, 0, "", 0.5), Cell("ar", 0, 0, "", 1.0)]  # one per temperature
    assert [c.name for c in ar] == ["ar-T0.5", "ar-T1"]
    assert len(cells) == 2 * 2 * 2 + 2
    judge = str(setup["judge"])
    # pareto.checkpoints.ar, else the judge the sweep scores with
    assert resolve_checkpoints(ar, ParetoConfig(checkpoints={"ar": judge}))["ar"] == judge
    assert resolve_checkpoints(ar, ParetoConfig(checkpoints={}), judge=judge)["ar"] == judge
    with pytest.raises(DiladiffError, match="pareto.checkpoints.ar"):
        resolve_checkpoints(ar, ParetoConfig(checkpoints={}))

    out = sample_cell(
        ar[1], checkpoint=judge, num_samples=3, batch_size=3, seed=0, top_p=1.0,
        out=tmp_path / "ar.jsonl", runtime=init_runtime("cpu"), precision="fp32",
    )  # fmt: skip
    meta = json.loads(meta_path(out).read_text())
    assert meta["model"] == "ar" and meta["settings"]["ndisc"] is None


def test_sweep_with_ar_cells_scores_tabulates_and_resumes(setup, tmp_path):
    mdlm = make_mdlm(setup["data"], tmp_path / "mdlm.pt")
    cfg = ParetoConfig(
        out=str(tmp_path / "res"), work_dir=str(tmp_path / "work"),
        checkpoints={"mdlm": str(mdlm)},  # ar: the judge the sweep scores with
        grids=(GridConfig(models=("mdlm", "ar"), ndisc=(2,), selection=("random",)),),
        num_samples=4, batch_size=4,
    )  # fmt: skip
    eval_cfg = EvalConfig(
        scorer=ScorerConfig(name=str(setup["judge"])), mauve=MauveConfig(enabled=False)
    )
    runtime = init_runtime("cpu")
    result = run_sweep(cfg=cfg, eval_cfg=eval_cfg, data_dir=setup["data"], runtime=runtime)
    ar = result.rows[1]
    assert (ar["model"], ar["cell"], ar["ndisc"], ar["selection"]) == ("ar", "ar-T1", 0, "")
    assert ar["forward_passes"] == SEQ_LEN - 1 and ar["tokens_per_forward"] == 1.0
    assert ar["genppl"] > 1 and "pareto" in result.plots
    assert "| ar | 0 | 0 |" in result.table.read_text()
    again = run_sweep(cfg=cfg, eval_cfg=eval_cfg, data_dir=setup["data"], runtime=runtime)
    assert (again.cells_cached, again.cells_run) == (2, 0) and again.rows == result.rows


def test_cli_sample_ar_defaults_to_the_recipes_judge(setup, tmp_path):
    import yaml
    from _clikit import cli

    recipe = {
        "name": "artest",
        "data": {"out": str(setup["data"]), "seq_len": SEQ_LEN, "tokenizer": {"vocab_size": 300}},
        "mdlm": {"model": {"vocab_size": 300, "hidden": 16, "depth": 1, "heads": 2}, "train": {}},
        "judge": {"out": str(setup["judge"])},
        "sample": {"out": str(tmp_path / "s" / "mdlm.jsonl"), "num_samples": 3, "batch_size": 2},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = cli("sample", str(path), "--model", "ar", "--seed", "5", "--device", "cpu",
               cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert printed["samples"] == str(tmp_path / "s" / "ar.jsonl")
    assert printed["timing"]["tokens_per_forward"] == 1.0
    meta = json.loads(Path(printed["meta"]).read_text())
    assert meta["checkpoint"] == str(setup["judge"].resolve()) and meta["settings"]["seed"] == 5
    bad = cli("sample", str(path), "--model", "ar", "--checkpoint", str(path), cwd=tmp_path)
    assert bad.returncode != 0 and "train-judge" in bad.stderr and "Traceback" not in bad.stderr
