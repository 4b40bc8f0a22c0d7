"""Do two or more runs of the pipeline reach the same verdicts?

Reads ``verdicts.json`` (written by ``scripts/report.py`` beside REPORT.md) from each
results directory and prints one Markdown table: every experiment's part, its outcome in
each run, and whether the runs agree. Exit status 0 when every part agrees, 1 when one
differs (the rule or the sample count is not yet good enough for that claim), 2 on bad
input.

Example:
    python scripts/compare_verdicts.py results/oracle results/oracle/pipeline_seed1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def read_verdicts(results: Path) -> dict[str, Any]:
    path = results / "verdicts.json" if results.is_dir() else results
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SystemExit(
            f"error: cannot read {path} ({err}); run scripts/report.py first"
        ) from None
    if not isinstance(record, dict):
        raise SystemExit(f"error: {path} is not a verdicts record")
    return record


def compare(runs: list[dict[str, Any]]) -> tuple[list[list[str]], int]:
    """Rows ``[experiment, part, outcome per run..., agree]`` and the number that differ."""
    rows, differ = [], 0
    for exp in sorted({e for run in runs for e in run}):
        parts = sorted({p for run in runs for p in run.get(exp, {}).get("parts", {})})
        for part in parts:
            outcomes = [run.get(exp, {}).get("parts", {}).get(part, "missing") for run in runs]
            same = len(set(outcomes)) == 1
            differ += not same
            rows.append([exp, part, *outcomes, "yes" if same else "**no**"])
    return rows, differ


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", type=Path, help="results directories (two or more)")
    args = p.parse_args(argv)
    if len(args.results) < 2:
        p.error("give two or more results directories")
    rows, differ = compare([read_verdicts(r) for r in args.results])
    header = ["experiment", "part", *(str(r) for r in args.results), "agree"]
    print("| " + " | ".join(header) + " |")
    print("| " + " | ".join("---" for _ in header) + " |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\n{len(rows) - differ} of {len(rows)} verdicts agree.")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
