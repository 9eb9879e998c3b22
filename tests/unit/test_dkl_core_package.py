"""dkl-core builds alone into a wheel that requires torch only and ships py.typed, the license and every module.

The wheel is built with the environment's setuptools (``pip wheel --no-deps --no-build-isolation``, no
network) from a copy of ``packages/dkl-core`` without its ``build/`` and ``*.egg-info`` leftovers: an
in-tree build would write into the working tree, and a stale ``build/lib`` could ship deleted modules.
"""

import email.parser
import importlib.util
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import dkl_core

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "packages" / "dkl-core"
SOURCES = PACKAGE / "src" / "dkl_core"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    assert importlib.util.find_spec("setuptools") is not None, (
        "setuptools must be installed in this environment: the wheel is built without build isolation "
        "(no network); or build with isolation, which downloads setuptools>=77"
    )
    work = tmp_path_factory.mktemp("dkl_core_wheel")
    source = work / "dkl-core"
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"))
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", str(source), "-w", str(work)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = work.glob("dkl_core-*.whl")
    return built


def read_metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(archive.read(name).decode("utf-8"))


def test_torch_is_the_only_unconditional_requirement(wheel):
    requirements = [Requirement(text) for text in read_metadata(wheel).get_all("Requires-Dist")]
    assert [r.name for r in requirements if r.marker is None] == ["torch"]
    conditional = [r for r in requirements if r.marker is not None]
    assert [r.name for r in conditional] == ["pyautoattack"]
    assert conditional[0].marker.evaluate({"extra": "autoattack"})
    assert not conditional[0].marker.evaluate({"extra": ""})
    assert read_metadata(wheel).get_all("Provides-Extra") == ["autoattack"]


def test_one_version_and_the_license_in_the_metadata(wheel):
    metadata = read_metadata(wheel)
    assert metadata["Version"] == dkl_core.__version__
    assert wheel.name.startswith(f"dkl_core-{dkl_core.__version__}-")
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert metadata.get_payload().startswith("# dkl-core")  # the README is the long description


def test_wheel_ships_py_typed_the_license_and_every_module(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (license_name,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert archive.read(license_name) == (ROOT / "LICENSE").read_bytes()
    assert "dkl_core/py.typed" in names
    modules = {f"dkl_core/{path.relative_to(SOURCES).as_posix()}" for path in SOURCES.rglob("*.py")}
    assert {"dkl_core/__init__.py", "dkl_core/losses/hcl.py", "dkl_core/attacks/autoattack.py"} <= modules
    assert modules <= names, sorted(modules - names)
    assert {n for n in names if n.endswith(".py")} == modules  # nothing stale either


def test_the_wheel_imports_on_its_own(wheel, tmp_path):
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp_path)
    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import torch, dkl_core, dkl_core.losses, dkl_core.prior, dkl_core.attacks\n"
        "assert dkl_core.__file__.startswith(sys.argv[1]), dkl_core.__file__\n"
        "dkl_core.gkl_loss(torch.randn(4, 10, requires_grad=True), torch.randn(4, 10)).backward()\n"
        "print(dkl_core.__version__)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == dkl_core.__version__


def test_license_files_and_changelog():
    license_text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert license_text.startswith("MIT License") and "the DKL toolkit authors" in license_text
    assert (PACKAGE / "LICENSE").read_bytes() == (ROOT / "LICENSE").read_bytes()
    changelog = (PACKAGE / "CHANGELOG.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", changelog, re.MULTILINE)
    assert headings[0].startswith("Unreleased")
    assert headings[1].startswith(dkl_core.__version__)  # the latest release is the package's version
    for entry in ("batchmean", "ClassPrior.weights", "extra_repr", "GKLLoss", "hcl_loss", "py.typed"):
        assert entry in changelog, entry
