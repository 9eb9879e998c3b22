"""Every recipe config's header tells a command that works from a fresh clone, and only the demo's configs write
into runs/demo (which the next `make demo` deletes)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted(REPO.glob("recipes/*/configs/*.yaml"))


def test_there_are_configs():
    assert len(CONFIGS) > 100


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_run_line_uses_make_or_the_environments_launcher(path):
    runs = re.findall(r"^# Run: (.*)$", path.read_text(), re.M)
    assert runs, f"{path.name}: no '# Run:' line"
    for command in runs:
        assert command.startswith(("make ", ".venv/bin/")), (
            f"{path.name}: {command}"
        )  # a bare `accelerate` is not on PATH


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_only_the_demos_configs_write_into_runs_demo(path):
    output_dir = str((yaml.safe_load(path.read_text()) or {}).get("output_dir") or "")
    if output_dir.startswith("runs/demo/"):
        assert re.search(r"^# Run: make demo", path.read_text(), re.M), f"{path.name} writes into {output_dir}"
