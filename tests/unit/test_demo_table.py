"""dkl_train.demo: the closing table of `make demo` reads every run's results.json."""

from __future__ import annotations

import pytest

from dkl_train.demo import main, rows
from dkl_train.results import write_json_atomic


def test_table_lists_every_run(tmp_path, capsys):
    kd = {"method": "ikl", "teacher": "resnet20", "student": "resnet8"}
    write_json_atomic(
        {"config": kd, "final": {"top1": 91.234}, "best": {"top1": {"value": 92.0, "epoch": 3}}, "wall_clock_s": 12.4},
        tmp_path / "kd" / "ikl" / "results.json",
    )
    adv = {"method": "trades", "model": "resnet8"}
    write_json_atomic(
        {"config": adv, "final": {"top1": 80.0, "autoattack_robust": 41.5}},
        tmp_path / "adv" / "trades" / "results.json",
    )
    table = rows(tmp_path)
    assert table[0] == ["adv", "trades", "resnet8", "trades", "80.00", "-", "autoattack_robust 41.50", "0 s"]
    assert table[1] == ["kd", "ikl", "resnet20 -> resnet8", "ikl", "91.23", "92.00", "", "12 s"]
    main([str(tmp_path)])
    assert "| kd | ikl | resnet20 -> resnet8 |" in capsys.readouterr().out


def test_no_runs_says_what_to_do(tmp_path):
    with pytest.raises(SystemExit, match="make demo"):
        main([str(tmp_path)])
