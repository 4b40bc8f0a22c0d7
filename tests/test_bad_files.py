"""Real commands (not dry runs) given bad FILES rather than bad values: a recipe that is
not UTF-8, a directory or empty; checkpoints that are truncated, empty, text or carry
metadata that is not JSON; prepared data and latents with a truncated or corrupt file;
text and sample files that are not UTF-8 or torn. Each ends with a non-zero exit, one
line on stderr naming the file, no traceback, and no output written (issue 14).

The commands run in this process on the micro recipe; one prepared data directory and
one 4-step MDLM are shared by every case."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch
import torch
from _clikit import cli
from _latents_synthetic import mixture, write_latents
from typer.testing import CliRunner

from diladiff_cli.cli import app

MICRO = str(Path(__file__).parent / "recipes" / "micro.yaml")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A directory holding the micro recipe's prepared data and MDLM (runs/micro/)."""
    root = tmp_path_factory.mktemp("bad-files")
    for command in ("prepare", "train-mdlm"):
        proc = cli(command, MICRO, cwd=root)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# A case builds its bad file in ``bad`` (a fresh directory) and returns the command's
# arguments. Outputs go under ``out/``, created empty beforehand (a command makes its
# output's parent directory before it reads its inputs).
Build = Callable[[Path, Path], list[str]]


def _text(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _checkpoint(work: Path, bad: Path, cut: Callable[[bytes], bytes]) -> Path:
    whole = (work / "runs" / "micro" / "mdlm.pt").read_bytes()
    return _text(bad / "mdlm.pt", cut(whole))


def _data_copy(work: Path, bad: Path) -> Path:
    return Path(shutil.copytree(work / "runs" / "micro" / "data", bad / "data"))


def _latents(bad: Path, damage: Callable[[Path], None]) -> Path:
    for split, n in (("train", 64), ("valid", 16)):
        write_latents(bad / "latents", mixture(n), split=split, shard_size=32)
    damage(bad / "latents" / "train")
    return bad / "latents"


def _sample(checkpoint: Path) -> list[str]:
    return ["sample", MICRO, "--checkpoint", str(checkpoint), "--out", "out/s.jsonl"]


def _train_mdlm(data: Path) -> list[str]:
    return ["train-mdlm", MICRO, "--set", f"data.out={data}", "--out", "out/m.pt"]


def _train_prior(latents: Path) -> list[str]:
    return [
        *("train-prior", "--steps", "1", "--out", "out/p.pt"),
        *("--set", f"prior.latents={latents}", "--set", "prior.autoencoder=out/none.pt"),
        *("--set", "prior.model.num_latents=4", "--set", "prior.model.latent_dim=8"),
    ]


def recipe_not_utf8(bad: Path, work: Path) -> list[str]:
    return ["prepare", str(_text(bad / "r.yaml", "name: caf\xe9\n".encode("latin-1")))]


def recipe_directory(bad: Path, work: Path) -> list[str]:
    (bad / "r.yaml").mkdir()
    return ["prepare", str(bad / "r.yaml")]


def recipe_empty(bad: Path, work: Path) -> list[str]:
    return ["train-mdlm", str(_text(bad / "r.yaml", b""))]


def checkpoint_truncated(bad: Path, work: Path) -> list[str]:
    return _sample(_checkpoint(work, bad, lambda whole: whole[: len(whole) // 2]))


def checkpoint_empty(bad: Path, work: Path) -> list[str]:
    return _sample(_checkpoint(work, bad, lambda whole: b""))


def checkpoint_text(bad: Path, work: Path) -> list[str]:
    return _sample(_text(bad / "mdlm.pt", b"step: 4\nweights: none\n"))


def checkpoint_directory(bad: Path, work: Path) -> list[str]:
    return _sample(bad)


def checkpoint_metadata_not_json(bad: Path, work: Path) -> list[str]:
    path = bad / "mdlm.pt"
    torn = '{"stage": "mdlm", "st'
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(path), metadata={"diladiff": torn})
    return _sample(path)


def init_from_truncated(bad: Path, work: Path) -> list[str]:
    checkpoint = _checkpoint(work, bad, lambda whole: whole[:20])
    return ["train-mdlm", MICRO, "--init-from", str(checkpoint), "--out", "out/m.pt"]


def data_train_npy_truncated(bad: Path, work: Path) -> list[str]:
    data = _data_copy(work, bad)
    blocks = data / "train.npy"
    blocks.write_bytes(blocks.read_bytes()[:-100])
    return _train_mdlm(data)


def data_meta_json_torn(bad: Path, work: Path) -> list[str]:
    data = _data_copy(work, bad)
    (data / "meta.json").write_text('{"fingerprint": ')
    return _train_mdlm(data)


def latents_shard_truncated(bad: Path, work: Path) -> list[str]:
    def cut(split: Path) -> None:
        shard = split / "shard-00001.safetensors"
        shard.write_bytes(shard.read_bytes()[:-8])

    return _train_prior(_latents(bad, cut))


def latents_index_torn(bad: Path, work: Path) -> list[str]:
    return _train_prior(_latents(bad, lambda split: (split / "index.json").write_text("{")))


def text_file_not_utf8(bad: Path, work: Path) -> list[str]:
    texts = _text(bad / "t.txt", b"caf\xe9 au lait\n")
    return ["encode", "--checkpoint", "out/none.pt", "--text-file", str(texts)]


def samples_not_utf8(bad: Path, work: Path) -> list[str]:
    samples = _text(bad / "s.jsonl", b'{"index": 0, "text": "caf\xe9"}\n')
    return ["eval", str(samples), "--recipe", MICRO, "--out", "out/e.json"]


def samples_torn(bad: Path, work: Path) -> list[str]:
    samples = _text(bad / "s.jsonl", b'{"index": 0, "tokens": [1, 2]}\n{"ind')
    return ["eval", str(samples), "--recipe", MICRO, "--out", "out/e.json"]


# (build(bad, work) -> the arguments, text the error line must hold)
CASES = [
    (recipe_not_utf8, "r.yaml: not UTF-8 text (byte 9)"),
    (recipe_directory, "r.yaml is a directory, not a YAML file"),
    (recipe_empty, "r.yaml: missing required key 'name'"),
    (checkpoint_truncated, "not a whole safetensors file (incomplete metadata, file not fully"),
    (checkpoint_empty, "mdlm.pt is not a diladiff checkpoint: empty"),
    (checkpoint_text, "mdlm.pt is not a diladiff checkpoint: not a whole safetensors file"),
    (checkpoint_directory, "is a directory, not a checkpoint"),
    (checkpoint_metadata_not_json, "mdlm.pt: its diladiff metadata is not valid JSON"),
    (init_from_truncated, "mdlm.pt is not a diladiff checkpoint: not a whole safetensors file"),
    (data_train_npy_truncated, "train.npy is damaged"),
    (data_meta_json_torn, "data/meta.json (Expecting value"),
    (latents_shard_truncated, "shard-00001.safetensors is unreadable (truncated or not a shard)"),
    (latents_index_torn, "unreadable latent index"),
    (text_file_not_utf8, "t.txt: not UTF-8 text (byte 3)"),
    (samples_not_utf8, "s.jsonl is not a text file of samples"),
    (samples_torn, "s.jsonl:2: not a sample line"),
]


@pytest.mark.parametrize(
    ("build", "needle"), CASES, ids=[build.__name__.replace("_", "-") for build, _ in CASES]
)
def test_bad_file_is_one_line_and_writes_nothing(build: Build, needle, work, tmp_path, monkeypatch):
    bad = tmp_path / "bad"
    bad.mkdir()
    args = build(bad, work)
    (work / "out").mkdir()
    monkeypatch.chdir(work)
    before = tree(work)
    try:
        result = CliRunner().invoke(
            app, [*args, "--device", "cpu"] if args[0] != "prepare" else args
        )
        after = tree(work)
    finally:
        shutil.rmtree(work / "out")
    # The command ended by its own exit, not by an exception that escaped it.
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code != 0 and "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert needle in lines[0], lines[0]
    assert after == before  # nothing written: no output, no lock, no temporary
