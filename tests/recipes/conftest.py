"""Fixtures for the recipe tests: the digits dataset prepared once per session, and `accelerate launch` on CPU.

The adv and ssl recipe tests use the same two fixtures:

    def test_smoke(digits_dir, launch, tmp_path):
        launch("recipes/adv/train.py", "--config", CONFIG, f"data_dir={digits_dir}", f"output_dir={tmp_path}/run")
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data_dir holding the prepared digits dataset (built offline from scikit-learn, about a second)."""
    from dkl_train.data import prepare

    data_dir = tmp_path_factory.mktemp("data")
    prepare("digits", data_dir)
    return data_dir


def _free_port() -> int:
    # Several test sessions may share the machine: never rely on the default rendezvous port 29500.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_command(script: str | Path, *args: str, processes: int = 1, threads: int | None = None) -> list[str]:
    """The `accelerate launch` command line for ``processes`` CPU processes (gloo when 2+).

    ``threads`` per process defaults to the two cores' worth: 2 for one process, 1 each for two. A test that
    compares a one-process run with a two-process run bit for bit passes ``threads=1``: CPU kernels round
    differently with another thread count, and training amplifies that over a few steps.
    """
    threads = threads or (1 if processes > 1 else 2)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no"]
    command += ["--dynamo_backend", "no", "--num_cpu_threads_per_process", str(threads)]
    if processes > 1:
        command += ["--multi_gpu", "--num_processes", str(processes), "--main_process_port", str(_free_port())]
    else:
        command += ["--cpu", "--num_processes", "1"]
    return command + [str(REPO / script), *map(str, args)]


def run_launch(command: list[str], expect_failure: bool = False, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a launch command from the repository root (CPU only); fail with the output's tail when it misbehaves."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    # The repository root on the path, as pytest has it: launched test scripts import tests.recipes.conftest.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    result = subprocess.run(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout
    )
    if (result.returncode != 0) != expect_failure:
        expectation = "fail" if expect_failure else "succeed"
        pytest.fail(
            f"expected {command[-1]!r}... to {expectation}; exit {result.returncode}. Output:\n{result.stdout[-6000:]}"
        )
    return result


def launch_runs(script: str | Path, root: Path, names: list[str], *args: str) -> Path:
    """Launch ``script`` once for several runs, ``root/<name>`` each, to pay the start-up once; returns ``root``.

    The script reads its arguments back with :func:`launched_runs` and calls its recipe's ``main`` per name.
    """
    run_launch(launch_command(script, root, ",".join(names), *args))
    return root


def config_for_method(schema: type, config_file: str | Path, overrides: list[str], method: str, path: Path) -> Path:
    """``config_file`` + ``overrides`` with ``method=method``, cut down to the settings that method reads, at ``path``.

    The smoke launches run every method of a recipe from one shared config and one list of overrides; a method
    refuses another's settings, so each run gets a config file of its own.
    """
    import dataclasses

    import yaml

    from dkl_train.config import parse_overrides, resolve_schema

    valid = {f.name for f in dataclasses.fields(resolve_schema(schema, {"method": method}))}
    values = yaml.safe_load(Path(config_file).read_text()) or {}
    values.update(parse_overrides(overrides))
    path.write_text(yaml.safe_dump({**{k: v for k, v in values.items() if k in valid}, "method": method}))
    return path


def launched_runs(argv: list[str]) -> tuple[Path, list[str], list[str]]:
    """In a script started by :func:`launch_runs`: ``(root, names, the other arguments)``."""
    return Path(argv[1]), argv[2].split(","), argv[3:]


@pytest.fixture
def launch() -> Callable[..., subprocess.CompletedProcess]:
    """``launch(script, *args, processes=1, threads=None, expect_failure=False)`` -> CompletedProcess (merged output).

    Fails the test with the output's tail when the exit status is not the expected one.
    """

    def run(
        script: str | Path,
        *args: str,
        processes: int = 1,
        threads: int | None = None,
        expect_failure: bool = False,
        timeout: float = 600,
    ):
        return run_launch(launch_command(script, *args, processes=processes, threads=threads), expect_failure, timeout)

    return run


def write_mdistiller_checkpoint(path: Path, arch: str, num_classes: int, seed: int = 0) -> Path:
    """A randomly initialised ``arch`` saved the way mdistiller saves its teachers (``ckpt_epoch_240.pth``)."""
    import torch

    from dkl_train.models import create_model

    torch.manual_seed(seed)
    model = create_model(arch, num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 240, "best_acc": 0.0}, path)
    return path


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 10-class resnet8 teacher checkpoint in mdistiller's format (random weights: the tests check plumbing)."""
    return write_mdistiller_checkpoint(tmp_path_factory.mktemp("teacher") / "ckpt_epoch_240.pth", "resnet8", 10)
