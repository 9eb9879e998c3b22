"""Every ```python block of packages/dkl-core/README.md and of the main README runs as written (pasted into a
fresh interpreter); the temperature conventions are documented."""

import re
from pathlib import Path

import pytest

import dkl_core

REPO = Path(__file__).resolve().parents[2]
README = REPO / "packages" / "dkl-core" / "README.md"
FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks(readme: Path) -> list[tuple[str, str]]:
    """``(name, source)`` of each block, named by its README, position and first line."""
    text = readme.read_text(encoding="utf-8")
    blocks = []
    for number, match in enumerate(FENCE.finditer(text), start=1):
        line = text.count("\n", 0, match.start(1)) + 1
        blocks.append((f"{readme.relative_to(REPO)} block {number} (line {line})", match.group(1)))
    return blocks


BLOCKS = python_blocks(README)
MAIN_BLOCKS = python_blocks(REPO / "README.md")


def test_the_readme_has_examples_for_the_losses_and_the_attacks():
    sources = "\n".join(source for _, source in BLOCKS)
    assert len(BLOCKS) >= 6
    for name in ("kl_loss", "dkl_loss", "ikl_loss", "gkl_loss", "dkd_loss", "hcl_loss", "ClassPrior", "GKLLoss",
                 "fused_linear_ikl_loss", "TopKClassPrior"):  # fmt: skip
        assert name in sources, f"no README example uses {name}"
    for name in (
        "pgd",
        "robust_accuracy",
        "inner_maximization",
        "AdversarialWeightPerturbation",
        "autoattack_evaluation",
    ):
        assert name in sources, f"no README example uses dkl_core.attacks.{name}"


@pytest.mark.parametrize(("name", "source"), BLOCKS + MAIN_BLOCKS, ids=[name for name, _ in BLOCKS + MAIN_BLOCKS])
def test_python_block_runs_as_written(name, source, capsys):
    assert MAIN_BLOCKS, "the main README's dkl-core example is gone"
    code = compile(source, f"<{name}>", "exec")
    try:
        exec(code, {"__name__": "__readme__"})
    except Exception as error:  # noqa: BLE001 - any failure is reported with the block's name
        pytest.fail(f"{name} fails: {type(error).__name__}: {error}\n--- the block ---\n{source}")
    if "autoattack_evaluation" in source:
        pytest.importorskip("pyautoattack")  # installed in the development environment: the guarded part ran
        out = capsys.readouterr().out
        assert "not installed" not in out and "apgd-t" in out, f"{name} did not run AutoAttack: {out!r}"


def test_temperature_table_and_docstrings_state_one_convention_each():
    text = README.read_text(encoding="utf-8")
    table = text[text.index("| function | what `T` does | `T^2` factor | typical value |") :].split("\n\n")[0]
    for function, t_squared in (
        ("kl_loss", "yes"), ("dkl_loss", "no"), ("ikl_loss", "no"), ("gkl_loss", "no"), ("dkd_loss", "yes"),
    ):  # fmt: skip
        row = next(line for line in table.splitlines() if line.startswith(f"| `{function}` |"))
        assert row.split("|")[3].strip().startswith(t_squared), row
        docstring = getattr(dkl_core, function).__doc__
        sentence = docstring[docstring.index("Temperature: ``temperature`` (``T``) divides") :].split(".")[0]
        assert ("multiplied by ``T^2``" in sentence) == (t_squared == "yes"), (function, sentence)
        assert ("no ``T^2`` factor" in sentence) == (t_squared == "no"), (function, sentence)
    assert "`weight_temperature`" in table and "`ClassPrior(temperature=)`" in table
    assert "Temperature: ``temperature`` (``T``) divides" in dkl_core.ClassPrior.__doc__
    for function in ("ikl_loss", "gkl_loss"):
        assert "``weight_temperature`` (``T_w``) divides" in getattr(dkl_core, function).__doc__
