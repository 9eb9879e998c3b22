"""tools.demo: the closing table of `make demo` reads every run's results.json and must match the README."""

from __future__ import annotations

import pytest

from dkl_train.results import write_json_atomic
from tools.demo import HEADER, OtherKernels, TableMismatchError, check_readme, main, markdown, readme_table, rows


@pytest.fixture
def runs(tmp_path):
    kd = {"method": "ikl", "teacher": "resnet20", "student": "resnet8"}
    write_json_atomic(
        {"config": kd, "final": {"top1": 91.234}, "best": {"top1": {"value": 92.0, "epoch": 3}}, "wall_clock_s": 12.4},
        tmp_path / "runs" / "kd" / "ikl" / "results.json",
    )
    adv = {"method": "trades", "model": "resnet8"}
    write_json_atomic(
        {"config": adv, "final": {"top1": 80.0, "autoattack_clean": 81.0, "autoattack_robust": 41.5}},
        tmp_path / "runs" / "adv" / "trades" / "results.json",
    )
    return tmp_path / "runs"


def readme_with(table_markdown: str, tmp_path) -> str:
    path = tmp_path / "README.md"
    path.write_text(f"# Project\n\nWhat `make demo` printed:\n\n{table_markdown}\n\nMore text.\n| not | the table |\n")
    return str(path)


def test_table_lists_every_run(runs, capsys):
    table = rows(runs)
    assert table[0] == [
        "adv", "trades", "resnet8", "trades", "80.00", "-", "autoattack_clean 81.00, autoattack_robust 41.50", "0 s"
    ]  # fmt: skip
    assert table[1] == ["kd", "ikl", "resnet20 -> resnet8", "ikl", "91.23", "92.00", "", "12 s"]
    main([str(runs)])
    assert "| kd | ikl | resnet20 -> resnet8 |" in capsys.readouterr().out


def test_no_runs_says_what_to_do(tmp_path):
    with pytest.raises(SystemExit, match="make demo"):
        main([str(tmp_path)])


def test_readme_table_is_parsed_back_exactly(runs, tmp_path):
    table = rows(runs)
    readme = readme_with(markdown(table), tmp_path)
    assert readme_table(open(readme).read()) == table  # empty cells survive, the text after the table is not read


def test_matching_table_passes_and_says_so(runs, tmp_path, capsys):
    readme = readme_with(markdown(rows(runs)), tmp_path)
    main([str(runs), "--readme", readme])
    assert "matches the sample" in capsys.readouterr().out


def test_wall_clock_is_the_one_column_that_may_differ(runs, tmp_path):
    table = rows(runs)
    sample = [row[:-1] + ["999 s"] for row in table]
    check_readme(table, readme_with(markdown(sample), tmp_path))  # no error
    sample[1][HEADER.index("best top-1")] = "92.01"
    with pytest.raises(TableMismatchError, match="kd/ikl: best top-1 is '92.00' here, '92.01' in the README"):
        check_readme(table, readme_with(markdown(sample), tmp_path))


def test_a_mismatching_row_fails_loudly(runs, tmp_path, capsys):
    table = rows(runs)
    sample = [list(row) for row in table]
    sample[0][HEADER.index("other")] = "autoattack_clean 81.00, autoattack_robust 40.00"
    readme = readme_with(markdown(sample), tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([str(runs), "--readme", readme])
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert "| adv | trades |" in captured.out  # the fresh table is printed before the error
    assert "adv/trades: other is 'autoattack_clean 81.00, autoattack_robust 41.50' here" in captured.err


def test_missing_and_extra_rows_are_named(runs, tmp_path):
    table = rows(runs)
    sample = [table[1], ["ssl", "fixmatch", "resnet8", "fixmatch", "70.00", "70.00", "", "60 s"]]
    with pytest.raises(TableMismatchError) as err:
        check_readme(table, readme_with(markdown(sample), tmp_path))
    assert "ssl/fixmatch: in the README's table, not among the runs" in str(err.value)
    assert "adv/trades: a run the README's table does not list" in str(err.value)


def test_a_readme_without_the_table_is_an_error(runs, tmp_path):
    path = tmp_path / "README.md"
    path.write_text("# Project\n\n| recipe | run |\n|---|---|\n| kd | ikl |\n")
    with pytest.raises(TableMismatchError, match="no sample table with the header"):
        check_readme(rows(runs), path)


def test_overridden_runs_skip_the_comparison_and_say_so(runs, tmp_path, capsys):
    readme = readme_with("no table here", tmp_path)
    main([str(runs), "--readme", readme, "--overridden", "DEMO_KD_ARGS", "DEMO_EVAL_ARGS"])
    out = capsys.readouterr().out
    assert "DEMO_KD_ARGS, DEMO_EVAL_ARGS set" in out and "not compared" in out


def test_summary_is_the_line_printed_when_a_run_ends(runs, capsys):
    main(["--summary", str(runs / "adv" / "trades")])
    assert capsys.readouterr().out.strip() == "top-1 80.00, autoattack_clean 81.00, autoattack_robust 41.50"


def test_the_sample_of_this_machines_cpu_kernels_is_the_one_checked(runs, tmp_path, capsys):
    table = rows(runs)
    other = [list(row) for row in table]
    other[0][HEADER.index("top-1 (%)")] = "1.00"  # what another CPU's kernels printed
    text = f"<!-- demo-sample: cpu=AVX512 -->\n{markdown(other)}\n\n<!-- demo-sample: cpu=AVX2 -->\n{markdown(table)}\n"
    readme = readme_with(text, tmp_path)
    check_readme(table, readme, kernels="AVX2")  # its own sample matches
    with pytest.raises(TableMismatchError, match="adv/trades: top-1 \\(%\\) is .* here, '1.00' in the README"):
        check_readme(table, readme, kernels="AVX512")
    with pytest.raises(OtherKernels, match="runs torch's DEFAULT kernels .* printed with AVX2, AVX512"):
        check_readme(table, readme, kernels="DEFAULT")


def test_no_sample_for_this_cpu_is_said_not_failed(runs, tmp_path, capsys, monkeypatch):
    import tools.demo

    monkeypatch.setattr(tools.demo, "cpu_kernels", lambda: "DEFAULT")
    readme = readme_with(f"<!-- demo-sample: cpu=AVX512 -->\n{markdown(rows(runs))}\n", tmp_path)
    main([str(runs), "--readme", readme])  # no SystemExit
    assert "not compared (nothing is wrong)" in capsys.readouterr().out
