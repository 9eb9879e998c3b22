"""Where benchmarks write: a folder of the user's by default, the committed figures only when asked."""

from __future__ import annotations

import json
import subprocess

import pytest

from benchmarks._common import COMMITTED_RESULTS_DIR, USER_RESULTS_DIR, output_dir, write_results


def test_benchmarks_leave_the_committed_figures_alone_unless_asked(tmp_path):
    assert output_dir([]) == USER_RESULTS_DIR != COMMITTED_RESULTS_DIR
    assert output_dir(["--device", "cpu", "--update-committed"]) == COMMITTED_RESULTS_DIR
    assert output_dir(["--results-dir", str(tmp_path), "--repeats", "1"]) == tmp_path
    # The default folder is not tracked: a benchmark run leaves `git status` as it was.
    probe = USER_RESULTS_DIR / "kd_speed_cpu.md"
    ignored = subprocess.run(["git", "check-ignore", "-q", str(probe)], cwd=USER_RESULTS_DIR.parents[1])
    assert ignored.returncode == 0


def test_both_output_options_at_once_is_an_error(capsys):
    with pytest.raises(SystemExit):
        output_dir(["--update-committed", "--results-dir", "x"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_write_results_prints_every_path_it_writes(tmp_path, capsys):
    path = write_results("demo_bench", {"ratio": 1.5}, [["a", "1.50"]], ["candidate", "ratio"], results_dir=tmp_path)
    out = capsys.readouterr().out
    assert path == tmp_path / "demo_bench.md" and f"wrote {tmp_path / 'demo_bench.json'}\nwrote {path}" in out
    assert json.loads((tmp_path / "demo_bench.json").read_text()) == {"ratio": 1.5}
    assert "| a | 1.50 |" in path.read_text()
