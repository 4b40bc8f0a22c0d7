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

from diladiff_cli.analysis.verdicts import agreement


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", type=Path, help="results directories (two or more)")
    args = p.parse_args(argv)
    if len(args.results) < 2:
        p.error("give two or more results directories")
    rows = agreement([read_verdicts(r) for r in args.results])
    header = ["experiment", "part", *(str(r) for r in args.results), "agree"]
    print("| " + " | ".join(header) + " |")
    print("| " + " | ".join("---" for _ in header) + " |")
    for row in rows:
        cells = [row.experiment, row.part, *row.outcomes, "yes" if row.agree else "**no**"]
        print("| " + " | ".join(cells) + " |")
    same = sum(row.agree for row in rows)
    print(f"\n{same} of {len(rows)} verdicts agree.")
    return 0 if same == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
