"""Running the `diladiff` CLI for the tests: in a subprocess, offline and single-threaded,
or in this process for quick dry runs; and the commands a recipe documents."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from click.testing import Result
from typer.testing import CliRunner


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "diladiff_cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def invoke(*args: str) -> Result:
    """Run the `diladiff` app in this process (fast; for dry runs)."""
    from diladiff_cli.cli import app

    return CliRunner().invoke(app, list(args))


_COMMAND = re.compile(r"^(?:\w+=\S+\s+)*(?:torchrun|diladiff|python)\s")


def documented_commands(recipe: Path) -> list[list[str]]:
    """The commands that a recipe's header comment documents, each as its argument list
    from the `diladiff` subcommand on (``diladiff X`` or ``torchrun ... -m diladiff_cli X``),
    or ``["python", script, ...]`` for a script; continuation lines are joined, shell
    comments dropped, and the placeholder ``RECIPE`` becomes the recipe itself."""
    header = []
    for line in recipe.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line[1:].strip())
    joined, pending = [], ""
    for line in header:
        pending = f"{pending} {line}".strip() if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        joined.append(pending)
        pending = ""
    commands = []
    for line in joined:
        if not _COMMAND.match(line):
            continue
        tokens = [
            recipe.as_posix() if t == "RECIPE" else t for t in shlex.split(line, comments=True)
        ]
        if "diladiff_cli" in tokens:
            commands.append(tokens[tokens.index("diladiff_cli") + 1 :])
        elif "diladiff" in tokens:
            commands.append(tokens[tokens.index("diladiff") + 1 :])
        else:
            commands.append(tokens[tokens.index("python") :])
    return commands
