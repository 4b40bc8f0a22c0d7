"""Paper-scale recipes: every one validates with --dry-run and states the paper's settings,
every command their headers document validates, and the whole pipeline and every
experiment's sweep run shrunk on CPU through the same code path, with local stand-ins for
the hub parts (a local text corpus, the real GPT-2 tokenizer files, an MDLM checkpoint
directory with the released names, a random BERT with the real WordPiece for
bert-base-uncased, a random GPT-2 for gpt2-large)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from _clikit import cli, documented_commands, invoke

from diladiff_cli.config import DiTConfig, JudgeStageConfig, load_recipe
from diladiff_cli.hub import gpt2_tokenizer_dir
from diladiff_cli.models.dit import DiT
from diladiff_cli.pareto import HYBRID, expand_cells

ROOT = Path(__file__).resolve().parent.parent
PAPER = sorted((ROOT / "recipes" / "paper").glob("*.yaml"))
MDLM_OWT = ROOT / "recipes" / "paper" / "mdlm_owt.yaml"
PIPELINE = ROOT / "recipes" / "paper" / "pipeline.yaml"
EXPERIMENTS = sorted((ROOT / "recipes" / "paper").glob("exp*.yaml"))
STAGED = [PIPELINE, *EXPERIMENTS]  # the recipes with every stage


@pytest.mark.parametrize("recipe", PAPER, ids=lambda p: p.name)
def test_paper_recipe_validates(recipe, tmp_path):
    r = load_recipe(recipe)
    assert r.data.seq_len == 1024 and r.data.tokenizer.name == "gpt2"
    assert r.mdlm.model.vocab_size == 50258 and r.mdlm.init_from == "kuleshov-group/mdlm-owt"
    proc = cli("train-mdlm", str(recipe), "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "kuleshov-group/mdlm-owt" in proc.stdout


def test_six_paper_experiments():
    assert [p.name[:4] for p in EXPERIMENTS] == [f"exp{i}" for i in range(1, 7)]


@pytest.mark.parametrize("recipe", STAGED, ids=lambda p: p.name)
def test_paper_settings(recipe):
    r, owt = load_recipe(recipe), load_recipe(MDLM_OWT)
    assert (r.data, r.mdlm) == (owt.data, owt.mdlm)  # mdlm_owt.yaml's, unchanged
    assert r.data.corpus.source == "Skylion007/openwebtext" and r.data.seq_len == 1024
    assert r.data.tokenizer.name == "gpt2" and r.mdlm.model.max_len == 1024
    # stage 1: frozen BERT -> compressor -> z, decoded by the fine-tuned MDLM
    assert r.ae.encoder.name == "bert-base-uncased" and r.ae.encoder.max_len <= 512
    assert r.ae.decoder.base == r.mdlm.out
    assert len(r.ae.decoder.cross_attn_after) == 2  # two cross-attention layers
    assert max(r.ae.decoder.cross_attn_after) < r.mdlm.model.depth
    assert r.encode.checkpoint == r.ae.out
    # stages 2 and 3 chain on stage 1
    shape = (r.ae.compressor.num_latents, r.ae.compressor.latent_dim)
    assert (r.prior.model.num_latents, r.prior.model.latent_dim) == shape
    assert r.prior.autoencoder == r.ae.out and r.prior.sampler.ncont == 200
    assert r.distill.teacher == r.prior.out and r.distill.ncont == 5
    assert r.distill.train.steps == 25000 and r.distill.objective == "meanflow"
    # evaluation: gpt2-large for GenPPL and MAUVE features, 5000 samples, no judge
    assert r.eval.scorer.name == "gpt2-large" and r.eval.scorer.context in (0, 1024)
    assert r.eval.mauve.features == "gpt2-large" and r.eval.mauve.featurizer == "mauve"
    assert r.pareto.num_samples == 5000 and r.sample.num_samples == 5000
    assert r.judge == JudgeStageConfig()  # no judge section: the schema's default, unused
    assert (r.sample.autoencoder, r.sample.prior, r.sample.student) == (
        r.ae.out,
        r.prior.out,
        r.distill.out,
    )
    ckpt = r.pareto.checkpoints
    assert (ckpt["mdlm"], ckpt["ladiff"], ckpt["diladiff"], ckpt["ae"]) == (
        r.mdlm.out,
        r.prior.out,
        r.distill.out,
        r.ae.out,
    )
    assert r.pareto.work_dir == "runs/paper/pareto"
    for cell in expand_cells(r.pareto):
        assert cell.checkpoint_key in ckpt and 1024 % cell.ndisc == 0, cell
        if recipe.name.startswith("exp6"):
            continue
        assert cell.ncont == {"mdlm": 0, "ladiff": 200, "diladiff": 5}[cell.model], cell


@pytest.mark.parametrize("recipe", EXPERIMENTS, ids=lambda p: p.name)
def test_paper_experiments_change_only_their_sweep(recipe):
    base, r = load_recipe(PIPELINE), load_recipe(recipe)
    for section in ("data", "mdlm", "sample", "ae", "encode", "judge", "eval", "prior", "distill"):
        assert getattr(r, section) == getattr(base, section), section
    assert r.name == f"paper-{recipe.stem.replace('_', '-')}" and len(r.description) > 100
    if recipe.name.startswith("exp1"):  # scripts/ae_report.py, not a sweep
        assert f"scripts/ae_report.py --recipe recipes/paper/{recipe.name}" in r.description
        return
    assert r.pareto.out == f"results/paper/{recipe.stem}"
    cells = expand_cells(r.pareto)
    assert {c.ndisc for c in cells} <= {32, 64, 128, 256, 512, 1024}
    if recipe.name.startswith(("exp2", "exp4", "exp5")):
        assert {c.ndisc for c in cells} == {32, 64, 128, 256, 512, 1024}
    if recipe.name.startswith("exp6"):
        labels = {c.distill for c in cells if c.model == "diladiff"}
        assert labels == {"meanflow-ln11", "meanflow-ln12", "tvm-ln11", "tvm-ln12"}
        assert r.pareto.checkpoints["diladiff/meanflow-ln12"] == r.distill.out
        assert (r.distill.time.mean, r.distill.time.std) == (-1.0, 2.0)
        assert {c.model for c in cells if c.model in HYBRID} == {"ladiff", "diladiff"}


@pytest.mark.parametrize("recipe", STAGED, ids=lambda p: p.name)
def test_paper_headers_state_cost_and_launch(recipe):
    header = "".join(line for line in recipe.read_text().splitlines() if line.startswith("#"))
    assert "GPU-h" in header and "torchrun --nproc_per_node=8 -m diladiff_cli" in header
    for flag in ("--nnodes=", "--node_rank=", "--rdzv_backend=c10d", "--rdzv_endpoint="):
        assert flag in header, flag


@pytest.mark.parametrize("recipe", PAPER, ids=lambda p: p.name)
def test_paper_documented_commands_validate(recipe, monkeypatch):
    monkeypatch.chdir(ROOT)
    commands = documented_commands(recipe.relative_to(ROOT))
    assert commands
    for args in commands:
        assert recipe.relative_to(ROOT).as_posix() in args, args
        if args[0] == "python":
            assert (ROOT / args[1]).is_file()
            load_recipe(args[args.index("--recipe") + 1])
            continue
        result = invoke(*args, "--dry-run")
        assert result.exit_code == 0, (args, result.output)


@pytest.mark.parametrize(
    ("command", "needles"),
    [
        (["train-ae"], ["name: bert-base-uncased", "base: runs/paper/mdlm.pt", "seq_len: 1024"]),
        (["encode"], ["checkpoint: runs/paper/ae.pt"]),
        (["train-prior"], ["ncont: 200", "autoencoder: runs/paper/ae.pt"]),
        (["distill"], ["steps: 25000", "ncont: 5", "teacher: runs/paper/ladiff.pt"]),
        (["pareto"], ["num_samples: 5000", "name: gpt2-large", "ae: runs/paper/ae.pt"]),
        (["sample", "--model", "ladiff"], ["num_samples: 5000", "prior: runs/paper/ladiff.pt"]),
        (["eval", "none.jsonl", "--recipe"], ["name: gpt2-large", "features: gpt2-large"]),
    ],
    ids=["train-ae", "encode", "train-prior", "distill", "pareto", "sample", "eval"],
)
def test_paper_pipeline_stage_dry_runs(command, needles, tmp_path):
    proc = cli(*command, str(PIPELINE), "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for needle in needles:
        assert needle in proc.stdout, (needle, proc.stdout)
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def fake_released_mdlm(path: Path, cfg: DiTConfig) -> None:
    """A directory shaped like the released checkpoint (``backbone.`` names, HF config)."""
    path.mkdir()
    torch.manual_seed(0)
    model = DiT.from_config(cfg)
    sd = {
        f"backbone.{k}": v.clone() + 0.01 * torch.randn_like(v)
        for k, v in model.state_dict().items()
    }
    safetensors.torch.save_file(sd, str(path / "model.safetensors"))
    (path / "config.json").write_text(
        json.dumps(
            {
                "vocab_size": cfg.vocab_size,
                "hidden_dim": cfg.hidden,
                "n_blocks": cfg.depth,
                "n_heads": cfg.heads,
                "cond_dim": cfg.cond_dim,
                "model_length": cfg.max_len,
                "time_conditioning": False,
            }
        )
    )


def shrunk_data_and_mdlm(tmp_path: Path) -> tuple[Path, list[str]]:
    """The data and MDLM stand-ins (a local corpus, the real GPT-2 tokenizer files, a
    released-style mdlm-owt directory): the tokenizer directory and their overrides."""
    corpus = tmp_path / "owt_standin.jsonl"
    texts = [
        f"Document {i}: the quick brown fox jumps over the lazy dog {i} times, then rests."
        for i in range(200)
    ]
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    gpt2 = gpt2_tokenizer_dir(tmp_path)
    small = DiTConfig(vocab_size=50258, hidden=16, depth=1, heads=2, cond_dim=8, max_len=32)
    fake_released_mdlm(tmp_path / "mdlm-owt", small)
    return gpt2, [
        f"data.corpus.source={corpus}",
        "data.corpus.valid_fraction=0.2",
        f"data.tokenizer.name={gpt2}",
        "data.seq_len=32",
        "data.num_proc=1",
        f"mdlm.init_from={tmp_path / 'mdlm-owt'}",
    ]


@pytest.mark.parametrize(
    "recipe", [p for p in PAPER if p.name == "mdlm_owt.yaml"], ids=lambda p: p.name
)
def test_paper_mdlm_runs_shrunk(recipe, tmp_path):
    _, stand_ins = shrunk_data_and_mdlm(tmp_path)
    shrink = [
        *stand_ins,
        "mdlm.model.hidden=16",
        "mdlm.model.depth=1",
        "mdlm.model.heads=2",
        "mdlm.model.cond_dim=8",
        "mdlm.model.max_len=32",
        "mdlm.train.steps=2",
        "mdlm.train.batch_size=4",
        "mdlm.train.micro_batch_size=2",
        "mdlm.train.eval_batches=1",
        "mdlm.train.compile=false",
        "sample.num_samples=2",
        "sample.ndisc=4",
    ]
    sets = [x for s in shrink for x in ("--set", s)]
    assert cli("prepare", str(recipe), *sets, cwd=tmp_path).returncode == 0
    proc = cli("train-mdlm", str(recipe), *sets, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = cli("sample", str(recipe), *sets, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = (tmp_path / "runs/paper/samples/mdlm_T1024.jsonl").read_text().splitlines()
    assert len(rows) == 2


def tiny_gpt2_dir(root: Path, tokenizer_dir: Path) -> Path:
    """A random one-layer GPT-2 with the real GPT-2 tokenizer: the stand-in for gpt2-large
    (GenPPL scorer and MAUVE features)."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    target = root / "gpt2-standin"
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=64, vocab_size=50257)
    GPT2LMHeadModel(config).save_pretrained(target)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(target)
    return target


def shrunk_pipeline(tmp_path: Path) -> list[str]:
    """``--set`` overrides that shrink the paper pipeline to seconds on local stand-ins."""
    from _ae_tiny import build_bert

    gpt2, stand_ins = shrunk_data_and_mdlm(tmp_path)
    scorer = tiny_gpt2_dir(tmp_path, gpt2)
    trainer = ["batch_size=4", "micro_batch_size=2", "eval_batches=1", "compile=false"]
    shrink = [
        *stand_ins,
        *(f"mdlm.model.{k}" for k in ("hidden=16", "depth=1", "heads=2", "cond_dim=8")),
        "mdlm.model.max_len=32",
        "mdlm.train.steps=2",
        *(f"{stage}.train.{kv}" for stage in ("mdlm", "ae", "prior", "distill") for kv in trainer),
        f"ae.encoder.name={build_bert(tmp_path)}",  # a random BERT with the real WordPiece
        "ae.encoder.max_len=64",
        "ae.encoder.stats_batches=1",
        *(f"ae.compressor.{k}" for k in ("num_latents=4", "latent_dim=8", "width=16")),
        *(f"ae.compressor.{k}" for k in ("depth=1", "heads=2")),
        "ae.decoder.cross_attn_after=[0]",
        "ae.decoder.cross_attn_heads=2",
        "ae.latent_stats_batches=1",
        "ae.train.steps=2",
        "ae.train.eval_every=0",
        "encode.batch_size=4",
        "encode.shard_size=8",
        *(f"prior.model.{k}" for k in ("num_latents=4", "latent_dim=8", "hidden=16")),
        *(f"prior.model.{k}" for k in ("depth=1", "heads=2", "cond_dim=8")),
        "prior.train.steps=2",
        "prior.train.eval_every=0",
        "distill.train.steps=2",
        f"eval.scorer.name={scorer}",
        "eval.scorer.context=32",
        "eval.scorer.batch_size=4",
        f"eval.mauve.features={scorer}",
        "eval.mauve.max_length=32",
        "eval.mauve.batch_size=4",
        "eval.mauve.num_clusters=2",
        "pareto.num_samples=8",
        "pareto.batch_size=8",
    ]
    return [x for s in shrink for x in ("--set", s)]


def test_paper_pipeline_and_experiments_run_shrunk(tmp_path, monkeypatch):
    """Every stage of recipes/paper/pipeline.yaml, then the sweep of each paper experiment
    (its models, selections, temperatures and students; Ndisc and Ncont shrunk). In this
    process (the subprocess path is the MDLM test's), from tmp_path as the working dir."""
    sets = shrunk_pipeline(tmp_path)
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> None:
        result = invoke(*args)
        assert result.exit_code == 0, f"{args[0]}: {result.output[-2000:]}"

    for command in ("prepare", "train-mdlm", "train-ae", "encode", "train-prior", "distill"):
        run(command, str(PIPELINE), *sets)
    runs = tmp_path / "runs" / "paper"
    assert {"mdlm.pt", "ae.pt", "ladiff.pt", "diladiff.pt"} <= {p.name for p in runs.iterdir()}
    for recipe in EXPERIMENTS:
        r = load_recipe(recipe)
        if not r.pareto.out.endswith(recipe.stem):
            continue  # experiment 1 is the latent analysis (scripts/ae_report.py), no sweep
        grids = [
            {
                "name": g.name,
                "models": list(g.models),
                "ndisc": [4],
                "ncont": [2] if set(g.models) & set(HYBRID) else [0],
                "selection": list(g.selection),
                "temperature": list(g.temperature)[:2],
                "distill": list(g.distill),
            }
            for g in r.pareto.grids
        ]
        students = [
            ("--set", f"pareto.checkpoints.{key}={runs / 'diladiff.pt'}")
            for key in r.pareto.checkpoints
            if key.startswith("diladiff/")
        ]
        out = tmp_path / "results" / recipe.stem
        extra = [*sets, "--set", f"pareto.grids={json.dumps(grids)}", "--out", str(out)]
        run("pareto", str(recipe), *extra, *(x for s in students for x in s))
        rows = (out / "pareto.csv").read_text().splitlines()
        models = {g for grid in grids for g in grid["models"]}
        assert {row.split(",")[0] for row in rows[1:]} == models, recipe.name
