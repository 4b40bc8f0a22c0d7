"""Speed-quality sweeps (`pareto`): sample and evaluate a grid of settings, then
write the table, the figures and the headline.

A recipe's ``pareto`` section lists one or more grids; each grid is the
cartesian product of its lists (model, ncont, ndisc, selection, temperature,
distillation label), and the sweep runs the union of their cells. The autoregressive
baseline ``ar`` (the judge drawing one token per forward pass) has neither a latent nor
a masked-diffusion stage: it makes one cell per temperature. Each cell runs once per
sampling seed (``pareto.seeds``), seed by seed (:func:`sampling_order`, so that the
machine's drift in speed falls on every cell alike): :func:`sample_cell` draws the samples
and :class:`~diladiff_cli.evaluate.Evaluator` scores them; the result is cached as
``<out>/cells/<cell>-<hash>.json`` (its ``seed``, its ``row`` and the evaluation
``record``), the hash covering the cell, the seed and the other sampling settings, the
content of the checkpoints (:class:`ContentHashes`), the prepared data's fingerprint
and the evaluation settings with the scorer's content, so an interrupted sweep resumes
where it stopped, a changed setting reruns only what it affects, and a retrained model
(or judge) is sampled (or scored) again even when its stage, step and config are the
old one's (samples are kept under ``work_dir`` and reused when only the evaluation
changed; a hybrid cell's latents are drawn once per seed). Each evaluation record
(``<work_dir>/scores/<hash>.json``) and real-text floor (``<work_dir>/floors/``) is
kept there too, so sweeps that share a work_dir and a cell (the experiments of one
scale) score it once; so are the checkpoints' hashes (``<work_dir>/hashes.json``).
A cached file that cannot be read back whole (truncated, of another key, samples
fewer than asked) is redone, never reused.

Outputs under ``out``: ``pareto.csv`` (one row per cell: each measure's mean over the
seeds and, in ``<measure>_se``, its standard error; see :func:`aggregate`),
``pareto_seeds.csv`` (one row per cell and seed, to recompute from), ``pareto.md`` (the
table, the judge and the real-text floor, the headline), ``floor.json`` and
PNG figures like the paper's. The frontiers, the headline and the tables are in
:mod:`diladiff_cli.frontier`, the figures in :mod:`diladiff_cli.plots`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from diladiff_cli.analysis.verdicts import Estimate, mean_and_se, mean_of, valid
from diladiff_cli.config.evaluation import EvalConfig, ParetoConfig
from diladiff_cli.config.train import Precision
from diladiff_cli.data import load_data_info
from diladiff_cli.distributed import Runtime
from diladiff_cli.errors import DiladiffError
from diladiff_cli.evaluate import Evaluator, ReferenceFloor, read_samples, speed_from_meta
from diladiff_cli.files import atomic_write_json, atomic_write_text
from diladiff_cli.frontier import (
    CELL_COLUMNS,
    CSV_COLUMNS,
    MEASURES,
    REFERENCE_COLUMNS,
    SEED_CSV_COLUMNS,
    TEXT_SE_MEASURES,
    SpeedUp,
    fmt,
    headline,
    write_csv,
    write_markdown,
)
from diladiff_cli.judge import read_judge_record
from diladiff_cli.latent_shards import file_sha256
from diladiff_cli.locks import output_lock
from diladiff_cli.plots import write_plots
from diladiff_cli.sample import SampleSettings, generate, meta_path, write_samples
from diladiff_cli.structs import to_dict
from diladiff_cli.train import Reporter

SAMPLERS = ("mdlm", "ladiff", "diladiff", "ar", "bound")  # models sample_cell can draw from
HYBRID = ("ladiff", "diladiff")  # latent first: they also need checkpoints["ae"]
HASHES_FILE = "hashes.json"  # in work_dir: the checkpoints' sha256, by path and stat
RACY_NS = 2_000_000_000  # coarser than any file system's timestamps (FAT: 2 s)


# ----------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    """One point of the sweep (mdlm cells always have ncont 0 and no distill label; ar
    cells ncont 0, ndisc 0, no selection and no distill label: only their temperature
    varies)."""

    model: str
    ncont: int
    ndisc: int
    selection: str
    temperature: float
    distill: str = ""

    @property
    def checkpoint_key(self) -> str:
        return f"{self.model}/{self.distill}" if self.distill else self.model

    @property
    def name(self) -> str:
        """File-safe, readable id."""
        if self.model == "ar":
            return f"ar-T{self.temperature:g}"
        distill = f"-{self.distill}" if self.distill else ""
        text = (
            f"{self.model}{distill}-nc{self.ncont}-nd{self.ndisc}-{self.selection}"
            f"-T{self.temperature:g}"
        )
        return "".join(c if c.isalnum() or c in "-._" else "_" for c in text)


def expand_cells(cfg: ParetoConfig) -> list[Cell]:
    """The union of the grids' cells, in order, without repeats."""
    cells: dict[Cell, None] = {}
    for g in cfg.grids:
        for model, ncont, ndisc, sel, temp, distill in itertools.product(
            g.models, g.ncont, g.ndisc, g.selection, g.temperature, g.distill
        ):
            if model in ("mdlm", "bound"):  # bound: the true topic's z, no latent steps
                ncont, distill = 0, ""
            if model == "ar":  # 0 and "": the plots and tables take numbers and strings
                ncont, ndisc, sel, distill = 0, 0, "", ""
            cells[Cell(model, ncont, ndisc, sel, float(temp), distill)] = None
    return list(cells)


# ----------------------------------------------------------------------------- sampling


def resolve_checkpoints(
    cells: list[Cell], cfg: ParetoConfig, *, judge: str | None = None
) -> dict[str, str]:
    """Check, before anything runs, that every cell's model can be sampled.

    Args:
        cells: the sweep's cells.
        cfg: the sweep (its ``checkpoints``).
        judge: the ``train-judge`` directory the sweep scores with, if it does: the ``ar``
            model's checkpoint when ``pareto.checkpoints`` has none.

    Raises:
        DiladiffError: one line naming the model and its missing checkpoint.
    """
    found: dict[str, str] = {}
    for cell in cells:
        key = cell.checkpoint_key
        if key in found:
            continue
        path = cfg.checkpoints.get(key, judge if key == "ar" else None)
        if path is None:
            raise DiladiffError(
                f"pareto: no checkpoint for model '{key}': set pareto.checkpoints.{key}"
                + (" (a `train-judge` directory)" if key == "ar" else "")
            )
        if not Path(path).exists():
            raise DiladiffError(
                f"pareto: model '{key}' needs checkpoint {path}, which does not exist "
                f"(train it first, or drop '{cell.model}' from the grids)"
            )
        if cell.model not in SAMPLERS:
            raise DiladiffError(
                f"pareto: sampling model '{cell.model}' (checkpoint {path}) is not available "
                f"yet; available: {', '.join(SAMPLERS)}"
            )
        found[key] = path
    if any(cell.model in HYBRID for cell in cells):
        ae = cfg.checkpoints.get("ae")
        if ae is None or not Path(ae).exists():
            raise DiladiffError(
                f"pareto: LaDiff / DiLaDiff cells decode with the autoencoder: set "
                f"pareto.checkpoints.ae to an existing `train-ae` checkpoint (got {ae})"
            )
        found["ae"] = ae
    return found


def sample_cell(
    cell: Cell,
    *,
    checkpoint: str,
    num_samples: int,
    batch_size: int,
    seed: int,
    top_p: float,
    out: Path,
    runtime: Runtime,
    precision: Precision,
    autoencoder: str | None = None,
    latent_cache: Path | None = None,
) -> Path:
    """Draw one cell's samples with :func:`~diladiff_cli.sample.generate` and write them
    (JSONL + ``.meta.json`` timing record).

    An ``mdlm`` cell on an autoencoder checkpoint decodes with its null latent (the same
    decoder as LaDiff's). Hybrid cells keep their latents in ``latent_cache``: cells
    that differ only in the discrete stage draw z once, and each still reports the
    latent stage's measured seconds. An ``ar`` cell samples the judge directory
    ``checkpoint`` (its record: ndisc and selection null); a ``bound`` cell the
    perfect-latent bound (a ``train-ae`` checkpoint with the oracle-topic encoder).

    Returns:
        The JSONL path.

    Raises:
        DiladiffError: a hybrid cell without an autoencoder.
    """
    direct = ("mdlm", "ar", "bound")  # sampled from their checkpoint alone
    if cell.model not in direct and (cell.model not in HYBRID or autoencoder is None):
        raise DiladiffError(
            f"pareto: sampling model '{cell.model}' (checkpoint {checkpoint}) is not available yet"
        )
    ar = cell.model == "ar"
    settings = SampleSettings(
        num_samples=num_samples,
        batch_size=batch_size,
        ndisc=None if ar else cell.ndisc,
        selection=None if ar else cell.selection,  # type: ignore[arg-type]
        temperature=cell.temperature,
        top_p=top_p,
        seed=seed,
    )
    hybrid = cell.model in HYBRID
    result = generate(
        model=cell.model,  # type: ignore[arg-type]
        checkpoint=checkpoint,
        settings=settings,
        runtime=runtime,
        autoencoder=autoencoder if hybrid else None,
        ncont=(cell.ncont or None) if hybrid else None,
        precision=precision,
        latent_cache=latent_cache if hybrid else None,
    )
    write_samples(result, out)
    return out


def _digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _read_json(path: Path) -> Any:
    """A JSON file's content; None when it is missing or cannot be read back whole."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # ValueError: truncated JSON, or bytes that are not text
        return None


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


class ContentHashes:
    """What identifies a checkpoint: the sha256 of its bytes, each file hashed once.

    A hash is kept for this process, and in ``memo`` (a JSON file) for later sweeps, by
    the file's path, size, mtime, ctime and inode: a checkpoint of GBs is read once per
    change, not once per sweep. A file modified within one timestamp tick of its hashing
    could be rewritten again with the same stat, so its hash is only remembered in
    ``memo`` if the file was ``RACY_NS`` old when hashed (git's "racily clean" rule);
    fresh checkpoints are hashed again by the next sweep.

    Args:
        memo: the JSON file that remembers hashes between sweeps.
    """

    def __init__(self, *, memo: Path) -> None:
        self.memo = memo
        known = _read_json(memo)
        self.known: dict[str, Any] = known if isinstance(known, dict) else {}
        self.session: dict[str, Any] = {}
        self.changed = False

    def file(self, path: Path) -> str:
        """The sha256 of one file."""
        key, stat = str(path.resolve()), _stat_key(path)
        for remembered in (self.session, self.known):
            entry = remembered.get(key)
            if isinstance(entry, dict) and entry.get("stat") == stat and "sha256" in entry:
                return str(entry["sha256"])
        started = time.time_ns()
        digest = file_sha256(path)
        if _stat_key(path) == stat:  # not replaced while it was read
            self.session[key] = {"stat": stat, "sha256": digest}
            if stat[1] < started - RACY_NS:
                self.known[key] = self.session[key]
                self.changed = True
        return digest

    def identity(self, path: str | Path) -> str | dict[str, str]:
        """A weights file's sha256, or that of every file of a directory (a judge:
        weights, config, tokenizer and ``judge.json``), by relative path."""
        path = Path(path)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            return {str(p.relative_to(path)): self.file(p) for p in files}
        return self.file(path)

    def save(self) -> None:
        """Write the remembered hashes to ``memo`` (when there are new ones)."""
        if self.changed:
            atomic_write_json(self.memo, self.known)
            self.changed = False


def _scorer_identity(name: str, hashes: ContentHashes) -> Any:
    """What identifies the scorer's weights: the content of a local directory (a judge
    retrained with the same settings invalidates the cache), else the hub id."""
    path = Path(name)
    return hashes.identity(path) if path.is_dir() else name


def _row_of(cell: Cell, record: Any, *, seed: int) -> dict[str, Any] | None:
    """The row of a cached evaluation record; None when the record is not one."""
    try:
        return make_row(cell, record, seed=seed)
    except (KeyError, TypeError, AttributeError):
        return None


def _damaged_samples(path: Path, *, num_samples: int) -> str | None:
    """Why a sample file (JSONL and its record) cannot be reused; None when it can."""
    try:
        found = read_samples(path)
        speed_from_meta(found.meta, source=str(meta_path(path)))
    except DiladiffError as err:
        return str(err)
    if len(found.tokens) != num_samples or found.meta.get("num_samples") != num_samples:
        return f"{path} holds {len(found.tokens)} samples, not {num_samples}"
    return None


# ----------------------------------------------------------------------------- results


def make_row(cell: Cell, record: dict[str, Any], *, seed: int) -> dict[str, Any]:
    """The row of one seed of a cell (:data:`~diladiff_cli.frontier.SEED_CSV_COLUMNS`)
    from its :class:`~diladiff_cli.evaluate.EvalRecord` (as a dict)."""
    speed = record["speed"]
    exact = record.get("oracle") or {}
    floor = record.get("reference_oracle") or {}
    return {
        "model": cell.model,
        "ncont": cell.ncont,
        "ndisc": cell.ndisc,
        "selection": cell.selection,
        "temperature": cell.temperature,
        "distill": cell.distill,
        "num_samples": record["num_samples"],
        "seed": seed,
        "forward_passes": speed["forward_passes_discrete"],
        "forward_passes_latent": speed["forward_passes_latent"],
        "tokens_per_forward": speed["tokens_per_forward"],
        "genppl": record["genppl"],
        "mauve": record["mauve"],
        "entropy": record["entropy"],
        "seconds_per_sample": speed["seconds_per_sample"],
        "latent_share": speed["latent_share"],
        "genppl_floor": record["reference_genppl"],
        "judge_valid_ppl": record["scorer_valid_ppl"],
        "reference_entropy": record["reference_entropy"],
        "oracle_nll": exact.get("nll_per_token"),
        "oracle_nll_se": exact.get("nll_per_token_se"),  # over this seed's texts
        "oracle_nll_floor": floor.get("nll_per_token"),
        "oracle_bad_transitions": exact.get("bad_transitions"),
        "oracle_purity": exact.get("purity"),
        "oracle_posterior_max": exact.get("posterior_max"),
        "oracle_topic_kl": exact.get("topic_kl"),
        "oracle_oov": exact.get("oov"),
        "device": speed["device"],
        "cell": cell.name,
    }


def aggregate(seed_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One cell's ``pareto.csv`` row from the rows of its seeds (:func:`make_row`): each
    of :data:`~diladiff_cli.frontier.MEASURES` as its mean over the seeds in ``m`` and
    that mean's standard error in ``m_se`` (None with one seed), the number of seeds in
    ``seeds``; the cell's settings and the reference columns (the same for every seed)
    from the first seed, the devices that ran them joined.

    The standard error of a measure of :data:`~diladiff_cli.frontier.TEXT_SE_MEASURES`
    (a mean over each seed's texts) combines the seeds' standard errors over their texts,
    sqrt(sum se_i^2) / n, when every seed has one; the others', and these without them,
    is the spread of the seed means (std ddof 1 / sqrt(n))."""
    first = seed_rows[0]
    row: dict[str, Any] = {k: first[k] for k in (*CELL_COLUMNS, *REFERENCE_COLUMNS, "cell")}
    row["seeds"] = len(seed_rows)
    row["device"] = "; ".join(dict.fromkeys(str(r["device"]) for r in seed_rows))
    for m in MEASURES:
        row[m], row[f"{m}_se"] = mean_and_se([r[m] for r in seed_rows])
    for m in TEXT_SE_MEASURES:
        ses = [r.get(f"{m}_se") for r in seed_rows]
        if row[f"{m}_se"] is not None and all(valid(se) for se in ses):
            row[f"{m}_se"] = mean_of(
                [Estimate(float(r[m]), float(se)) for r, se in zip(seed_rows, ses, strict=True)]
            ).se
    return {k: row[k] for k in CSV_COLUMNS}


# ----------------------------------------------------------------------------- sweep


@dataclass
class SweepResult:
    """What a sweep produced.

    Attributes:
        rows: one dict per cell (the CSV columns): means and standard errors over seeds.
        seed_rows: one dict per cell and seed (the ``pareto_seeds.csv`` columns).
        csv: the CSV file (``pareto.csv``).
        seeds_csv: the per-seed CSV file (``pareto_seeds.csv``).
        table: the Markdown file.
        plots: figures written, by name.
        skipped_plots: figures not drawn, with the reason.
        floor: the judge's perplexity and the real-text scores.
        speedups: the headline.
        cells_run: cells with a seed sampled or evaluated in this call.
        cells_cached: cells whose results already existed for every seed.
    """

    rows: list[dict[str, Any]]
    seed_rows: list[dict[str, Any]]
    csv: Path
    seeds_csv: Path
    table: Path
    plots: dict[str, Path]
    skipped_plots: dict[str, str]
    floor: ReferenceFloor
    speedups: list[SpeedUp]
    cells_run: int = 0
    cells_cached: int = 0


@dataclass(frozen=True)
class _Sweep:
    """What the cells of one sweep share: where their files go, what identifies
    their samples and scores, and the one evaluator (its scorer, featuriser and
    references are loaded once)."""

    out: Path
    work: Path
    checkpoints: dict[str, str]
    identities: dict[str, Any]  # checkpoint key -> its content (ContentHashes.identity)
    sampling: dict[str, Any]  # num_samples, batch_size, top_p (the seed: per call)
    eval_id: dict[str, Any]  # evaluation settings, data fingerprint, scorer content
    runtime: Runtime
    precision: Precision
    evaluator: Evaluator
    log: Callable[[str], None]

    def cell(self, cell: Cell, *, seed: int, tag: str) -> tuple[dict[str, Any], bool]:
        """One seed of a cell: read back when done before, else sampled (unless its
        samples exist) and scored (unless another sweep over the work_dir scored them).
        A cached file that cannot be read back whole is redone, never reused.

        Returns:
            (the seed's row, whether it was done before).
        """
        sample_key = _digest(
            {"cell": asdict(cell), **self.sampling, "seed": seed,
             "checkpoint": self.identities[cell.checkpoint_key],
             "autoencoder": self.identities.get("ae") if cell.model in HYBRID else None,
             "data": self.eval_id["data"], "precision": self.precision}
        )  # fmt: skip
        eval_key = _digest({"sample": sample_key, **self.eval_id})
        result_file = self.out / "cells" / f"{cell.name}-{eval_key}.json"
        if result_file.exists():  # the row is rebuilt: records outlive the columns
            payload = _read_json(result_file)
            row = None
            if isinstance(payload, dict) and payload.get("sample_key") == sample_key:
                row = _row_of(cell, payload.get("record"), seed=seed)
            if row is not None:
                self.log(f"{tag}: done before")
                return row, True
            self.log(f"{tag}: {result_file} is damaged: redoing it")
        score_file = self.work / "scores" / f"{eval_key}.json"
        record = _read_json(score_file)
        if _row_of(cell, record, seed=seed) is not None:  # scored by another sweep
            self.log(f"{tag}: scored before")
        else:
            samples = self.work / "samples" / f"{cell.name}-{sample_key}.jsonl"
            fresh = not meta_path(samples).is_file()  # the record is written last
            n = self.sampling["num_samples"]
            damage = None if fresh else _damaged_samples(samples, num_samples=n)
            if fresh or damage:
                self.log(f"{tag}: sampling" + (f" again ({damage})" if damage else ""))
                sample_cell(
                    cell,
                    checkpoint=self.checkpoints[cell.checkpoint_key],
                    autoencoder=self.checkpoints.get("ae"),
                    out=samples,
                    runtime=self.runtime,
                    precision=self.precision,
                    latent_cache=self.work / "latents",
                    seed=seed,
                    **self.sampling,
                )
            self.log(f"{tag}: evaluating")
            record = asdict(self.evaluator.evaluate(samples))
            atomic_write_json(score_file, record, indent=2)
        row = make_row(cell, record, seed=seed)
        payload = {
            "cell": asdict(cell), "seed": seed, "sample_key": sample_key, "row": row,
            "record": record,
        }  # fmt: skip
        atomic_write_json(result_file, payload, indent=2)
        self.log(
            f"{tag}: GenPPL {row['genppl']:.2f} MAUVE {fmt(row['mauve'])} entropy "
            f"{row['entropy']:.3f} tokens/fwd {row['tokens_per_forward']:.2f}"
        )
        return row, False

    def floor(self, *, num_samples: int, num_references: int) -> ReferenceFloor:
        """The real-text floor of ``num_references`` texts: read back from ``floor.json``
        or the work_dir when computed before, else computed; written to both.

        Args:
            num_samples: samples per cell (the floor's key, with the evaluation).
            num_references: reference texts scored.
        """
        key = _digest({**self.eval_id, "num": num_samples})
        files = (self.out / "floor.json", self.work / "floors" / f"{key}.json")
        floor = None
        for file in files:
            saved = _read_json(file)
            if isinstance(saved, dict) and saved.get("key") == key:
                try:
                    floor = ReferenceFloor(**saved["floor"])
                except (KeyError, TypeError):  # damaged: computed again, rewritten below
                    continue
                break
        if floor is None:
            self.log("real-text floor")
            floor = self.evaluator.floor(num_references)
        # Compared as text first: a file that already holds this floor is left untouched.
        text = json.dumps({"key": key, "floor": asdict(floor)}, indent=2) + "\n"
        for file in files:
            if not file.is_file() or file.read_bytes() != text.encode():
                atomic_write_text(file, text)
        return floor


def sampling_order(num_cells: int, seeds: tuple[int, ...]) -> list[tuple[int, int]]:
    """The order a sweep samples its (cell index, seed) pairs in: seed by seed, each
    seed's pass over the cells rotated by a further ``num_cells / len(seeds)``.

    Seconds per sample are measured on a machine whose speed drifts by several per cent
    over minutes; sampled cell by cell, a cell timed in a slow minute is slower by that
    much in every seed and the drift lands on one side of a speed-up. Seed by seed, each
    cell is timed once in each part of the sweep and at about the same mean position as
    every other cell, so the drift falls on all of them alike and shows in each cell's
    standard error over its seeds.
    """
    order = []
    for i, seed in enumerate(seeds):
        shift = (i * num_cells) // len(seeds)
        order += [((k + shift) % num_cells, seed) for k in range(num_cells)]
    return order


def run_sweep(
    *,
    cfg: ParetoConfig,
    eval_cfg: EvalConfig,
    data_dir: str | Path,
    runtime: Runtime,
    precision: Precision = "fp32",
    reporter: Reporter | None = None,
) -> SweepResult:
    """Sample and evaluate every cell not done yet, then write the CSV, the table,
    the figures and the headline under ``cfg.out``.

    Args:
        cfg: the grids and sampling settings.
        eval_cfg: how samples are scored.
        data_dir: the prepared data (tokenizer, references).
        runtime: device (one process).
        precision: autocast precision of the samplers.
        reporter: progress messages.

    Returns:
        A :class:`SweepResult`.

    Raises:
        DiladiffError: another sweep is writing ``cfg.out``.
    """
    # One sweep per results directory, for the whole run (the work_dir is shared on
    # purpose: its files are keyed by content and written atomically).
    with output_lock(cfg.out):
        cells = expand_cells(cfg)
        scorer = eval_cfg.scorer.name
        judge = scorer if read_judge_record(scorer) is not None else None
        checkpoints = resolve_checkpoints(cells, cfg, judge=judge)
        info = load_data_info(data_dir)
        evaluator = Evaluator(
            cfg=eval_cfg, data_dir=data_dir, device=runtime.device, reporter=reporter
        )
        hashes = ContentHashes(memo=Path(cfg.work_dir) / HASHES_FILE)
        identities = {k: hashes.identity(p) for k, p in checkpoints.items()}  # "ar": a judge dir
        scorer_id = _scorer_identity(eval_cfg.scorer.name, hashes)
        hashes.save()
        sweep = _Sweep(
            out=Path(cfg.out),
            work=Path(cfg.work_dir),
            checkpoints=checkpoints,
            identities=identities,
            sampling={k: getattr(cfg, k) for k in ("num_samples", "batch_size", "top_p")},
            eval_id={"eval": to_dict(eval_cfg), "data": info.fingerprint, "scorer": scorer_id},
            runtime=runtime,
            precision=precision,
            evaluator=evaluator,
            log=reporter.log if reporter is not None else (lambda _: None),
        )
        found: dict[tuple[int, int], tuple[dict[str, Any], bool]] = {}
        for n, seed in sampling_order(len(cells), cfg.seeds):
            cell = cells[n]
            tag = f"[{n + 1}/{len(cells)}] {cell.name} seed {seed}"
            found[n, seed] = sweep.cell(cell, seed=seed, tag=tag)
        rows, seed_rows, run, cached = [], [], 0, 0
        for n in range(len(cells)):
            mine = [found[n, seed][0] for seed in cfg.seeds]
            done_before = all(found[n, seed][1] for seed in cfg.seeds)
            seed_rows += mine
            rows.append(aggregate(mine))
            cached += done_before
            run += not done_before
        floor = sweep.floor(
            num_samples=cfg.num_samples, num_references=eval_cfg.num_references or cfg.num_samples
        )
        return _write_outputs(
            rows,
            seed_rows=seed_rows,
            floor=floor,
            cfg=cfg,
            eval_cfg=eval_cfg,
            sampling=sweep.sampling,
            cells_run=run,
            cells_cached=cached,
        )


def _write_outputs(
    rows: list[dict[str, Any]],
    *,
    seed_rows: list[dict[str, Any]],
    floor: ReferenceFloor,
    cfg: ParetoConfig,
    eval_cfg: EvalConfig,
    sampling: dict[str, Any],
    cells_run: int,
    cells_cached: int,
) -> SweepResult:
    """The headline, ``pareto.csv``, ``pareto_seeds.csv``, ``pareto.md`` and the figures
    under ``cfg.out``."""
    out = Path(cfg.out)
    speedups = headline(rows, baseline=cfg.baseline, temperature=cfg.frontier_temperature)
    csv_path = write_csv(rows, out / "pareto.csv")
    seeds_csv = write_csv(seed_rows, out / "pareto_seeds.csv", columns=SEED_CSV_COLUMNS)
    table = write_markdown(
        rows,
        floor=floor,
        speedups=speedups,
        eval_cfg=eval_cfg,
        settings={**sampling, "seeds": cfg.seeds, "baseline": cfg.baseline},
        path=out / "pareto.md",
    )
    plots, skipped = write_plots(rows, floor=floor, temperature=cfg.frontier_temperature, out=out)
    return SweepResult(
        rows=rows,
        seed_rows=seed_rows,
        csv=csv_path,
        seeds_csv=seeds_csv,
        table=table,
        plots=plots,
        skipped_plots=skipped,
        floor=floor,
        speedups=speedups,
        cells_run=cells_run,
        cells_cached=cells_cached,
    )
