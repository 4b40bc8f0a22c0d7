"""Behaviour fingerprint: run every stage of the tiny recipe, shrunk to seconds, through the
CLI and hash what it writes, so two commits can be compared byte for byte.

It drives only the command line (``python -m diladiff_cli``), so the same script runs on
any commit that has these subcommands. What is hashed:

* each ``sample`` JSONL (mdlm, ladiff, diladiff, reconstruct) byte for byte;
* each ``eval`` record's numbers (timings and paths left out: they change run to run);
* each checkpoint's tensors (``train-mdlm``, ``train-ae``, ``train-prior``, ``distill``)
  and its metadata without versions, paths and times;
* a ``pareto`` sweep over LaDiff and DiLaDiff cells: the latents it draws (the tiny
  decoder barely reads z after a few steps, so the samples alone would not show a change
  in the latent path) and the samples of every cell.

Usage::

    python scripts/fingerprint.py --work /tmp/fp_before --out /tmp/fp_before.json
    python scripts/fingerprint.py --work /tmp/fp_after --out /tmp/fp_after.json
    diff /tmp/fp_before.json /tmp/fp_after.json   # empty: behaviour unchanged

Threads are pinned to one (``OMP_NUM_THREADS=1``) so float reductions run in one order.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "tiny" / "default.yaml"
VOLATILE = {"sha256", "seconds", "time", "versions", "path", "device", "created", "wall", "samples"}


def _shrunk(work: Path) -> list[str]:
    r = work / "runs"
    sets = {
        "data.corpus.max_documents": 400,
        "data.tokenizer.vocab_size": 512,
        "data.out": r / "data",
        "mdlm.out": r / "mdlm.pt",
        "mdlm.model.vocab_size": 512,
        "mdlm.model.hidden": 48,
        "mdlm.model.depth": 2,
        "mdlm.model.heads": 2,
        "mdlm.model.cond_dim": 16,
        "mdlm.train.steps": 6,
        "mdlm.train.batch_size": 4,
        "mdlm.train.log_every": 2,
        "mdlm.train.eval_every": 3,
        "mdlm.train.eval_batches": 1,
        "mdlm.train.ckpt_every": 3,
        "ae.out": r / "ae.pt",
        "ae.decoder.base": r / "mdlm.pt",
        "ae.decoder.cross_attn_after": "[0,1]",
        "ae.decoder.cross_attn_heads": 2,
        "ae.encoder.cache_blocks": 32,
        "ae.encoder.stats_batches": 1,
        "ae.compressor.num_latents": 8,
        "ae.compressor.latent_dim": 8,
        "ae.compressor.width": 32,
        "ae.compressor.depth": 1,
        "ae.compressor.heads": 2,
        "ae.latent_stats_batches": 1,
        "ae.train.steps": 4,
        "ae.train.batch_size": 4,
        "ae.train.log_every": 2,
        "ae.train.eval_batches": 1,
        "ae.train.ckpt_every": 2,
        "encode.checkpoint": r / "ae.pt",
        "encode.out": r / "latents",
        "encode.limit": 32,
        "encode.shard_size": 16,
        "encode.batch_size": 8,
        "prior.out": r / "ladiff.pt",
        "prior.latents": r / "latents",
        "prior.autoencoder": r / "ae.pt",
        "prior.model.num_latents": 8,
        "prior.model.latent_dim": 8,
        "prior.model.hidden": 32,
        "prior.model.depth": 1,
        "prior.model.heads": 2,
        "prior.model.cond_dim": 16,
        "prior.sampler.ncont": 6,
        "prior.train.steps": 4,
        "prior.train.batch_size": 8,
        "prior.train.log_every": 2,
        "prior.train.ckpt_every": 2,
        "distill.teacher": r / "ladiff.pt",
        "distill.out": r / "diladiff.pt",
        "distill.ncont": 2,
        "distill.train.steps": 3,
        "distill.train.batch_size": 4,
        "distill.train.log_every": 1,
        "distill.train.ckpt_every": 2,
        "judge.out": r / "judge",
        "judge.model.n_embd": 32,
        "judge.model.n_head": 2,
        "judge.train.steps": 4,
        "judge.train.batch_size": 4,
        "judge.train.log_every": 2,
        "judge.train.ckpt_every": 2,
        "eval.scorer.name": r / "judge",
        "eval.mauve.num_clusters": 2,
        "sample.checkpoint": r / "mdlm.pt",
        "sample.autoencoder": r / "ae.pt",
        "sample.prior": r / "ladiff.pt",
        "sample.student": r / "diladiff.pt",
        "sample.num_samples": 6,
        "sample.batch_size": 4,
        "sample.ndisc": 8,
        "sample.out": r / "samples" / "mdlm.jsonl",
    }
    out: list[str] = []
    for key, value in sets.items():
        out += ["--set", f"{key}={value}"]
    return out


def _run(work: Path, *args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "diladiff_cli", *args]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(args[:1])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _stable(value):
    """A record without its run-to-run fields (timings, paths, versions)."""
    if isinstance(value, dict):
        return {
            k: _stable(v)
            for k, v in value.items()
            if not any(word in k for word in VOLATILE) and k not in {"timing", "speed"}
        }
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _weights(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        tensors = {k: _sha(f.get_tensor(k).numpy().tobytes()) for k in sorted(f.keys())}
        meta = {k: json.loads(v) if v[:1] in "{[" else v for k, v in (f.metadata() or {}).items()}
    return {"tensors": _sha(json.dumps(tensors).encode()), "meta": _stable(meta)}


def _sweep(work: Path, rec: str, sets: list[str]) -> dict:
    """A small pareto sweep of LaDiff and DiLaDiff cells: hashes of the latents it keeps
    and of every cell's samples (file names hold checkpoint hashes, so contents only)."""
    grid = [
        {"name": "fp", "models": ["mdlm", "ladiff", "diladiff"], "ncont": [2], "ndisc": [8],
         "selection": ["random"]}
    ]  # fmt: skip
    r = work / "runs"
    ckpts = {"mdlm": "ae.pt", "ladiff": "ladiff.pt", "diladiff": "diladiff.pt", "ae": "ae.pt"}
    ckpts = {k: str(r / v) for k, v in ckpts.items()}
    extra = [
        "--set", f"pareto.grids={json.dumps(grid)}",
        "--set", f"pareto.work_dir={r / 'pareto'}",
        "--set", f"pareto.checkpoints={json.dumps(ckpts)}",
        "--set", "pareto.num_samples=6",
        "--set", "pareto.batch_size=4",
        "--set", "eval.mauve.enabled=false",
    ]  # fmt: skip
    _run(work, "pareto", rec, *sets, *extra, "--out", str(work / "results"), "--device", "cpu")
    from safetensors import safe_open

    latents = []
    for path in (r / "pareto" / "latents").glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            latents.append(_sha(f.get_tensor("latents").numpy().tobytes()))
    samples = sorted(_sha(p.read_bytes()) for p in (r / "pareto").rglob("*.jsonl"))
    return {"pareto/latents": sorted(latents), "pareto/samples": samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="Scratch directory.")
    parser.add_argument("--out", type=Path, required=True, help="Fingerprint JSON to write.")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    s = _shrunk(work)
    rec = str(RECIPE)
    r = work / "runs"
    _run(work, "prepare", rec, *s)
    _run(work, "train-mdlm", rec, *s, "--device", "cpu")
    _run(work, "train-ae", rec, *s, "--device", "cpu")
    _run(work, "encode", rec, *s, "--device", "cpu")
    _run(work, "train-prior", rec, *s, "--device", "cpu")
    _run(work, "distill", rec, *s, "--device", "cpu")
    _run(work, "train-judge", rec, *s, "--device", "cpu")
    samples = {
        "mdlm": ["--model", "mdlm"],
        "ladiff": ["--model", "ladiff"],
        "diladiff": ["--model", "diladiff", "--ncont", "2"],
        "reconstruct": ["--reconstruct", "5", "--checkpoint", str(r / "ae.pt")],
    }
    fingerprint: dict = {}
    for name, extra in samples.items():
        out = r / "samples" / f"{name}.jsonl"
        _run(work, "sample", rec, *s, *extra, "--out", str(out), "--seed", "3", "--device", "cpu")
        fingerprint[f"sample/{name}"] = _sha(out.read_bytes())
    files = [str(r / "samples" / f"{n}.jsonl") for n in ("mdlm", "diladiff")]
    _run(work, "eval", *files, "--recipe", rec, *s, "--device", "cpu")
    for f in files:
        record = json.loads(Path(f).with_name(Path(f).stem + ".eval.json").read_text())
        fingerprint[f"eval/{Path(f).stem}"] = _stable(record)
    for name in ("mdlm", "ae", "ladiff", "diladiff"):
        fingerprint[f"weights/{name}"] = _weights(r / f"{name}.pt")
    fingerprint.update(_sweep(work, rec, s))
    text = json.dumps(fingerprint, indent=1, sort_keys=True).replace(str(work), "<work>") + "\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
