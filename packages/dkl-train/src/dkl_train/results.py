"""Writing run results: ``results.json`` written atomically, with the code revision that produced it."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

from .atomic import write_text_atomic


def git_revision(cwd: str | Path | None = None) -> str:
    """``git rev-parse HEAD`` (with ``-dirty`` when tracked files changed), or ``"unknown"`` outside a checkout."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{rev}-dirty" if dirty else rev or "unknown"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them readable rather than invalid
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # 0-d tensors and numpy scalars
        return _jsonable(value.item())
    return value


def write_json_atomic(payload: dict[str, Any], path: str | Path) -> Path:
    """Write JSON to ``path`` atomically (:func:`dkl_train.atomic.write_atomic`): readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, json.dumps(_jsonable(payload), indent=2) + "\n")


def read_results(run_dir: str | Path) -> dict[str, Any]:
    """The ``results.json`` of a run folder."""
    return json.loads((Path(run_dir) / "results.json").read_text())


def selected_by_validation(history: list[dict[str, Any]], key: str = "val_ema_top1") -> dict[str, Any] | None:
    """The test metrics of the evaluation with the best validation ``key`` (first one on ties)."""
    scored = [h for h in history if key in h]
    if not scored:
        return None
    best = max(scored, key=lambda h: h[key])  # max keeps the first of equal values
    picked = {k: v for k, v in best.items() if k.startswith("test_")}
    return {"selected_on": key, key: best[key], "iteration": best["global_step"], **picked}
