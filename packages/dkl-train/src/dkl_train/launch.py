"""Launch settings: how many processes and machines, which device and precision, and who decided.

:class:`~dkl_train.training.Run` prints one line at start from :func:`launch_sources` (a launcher flag, the saved
``accelerate config``, an environment variable, Accelerate's detection or the run's config), warns about idle
GPUs (:func:`unused_gpu_warning`), refuses trackers that are not installed (:func:`check_trackers`) and starts
the others (:func:`start_trackers`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UserError

if TYPE_CHECKING:
    from accelerate import Accelerator


class TrackerNotInstalledError(UserError, ImportError):
    """A tracker named in ``report_to`` is not installed (the message gives the pip command)."""


def check_trackers(names: Iterable[str]) -> None:
    """Raise :class:`TrackerNotInstalledError` naming every tracker of ``report_to`` whose package is missing.

    Accelerate silently drops such a tracker; a run that was meant to log to wandb must not run for days
    without logging. Trackers are optional: only users who want one install it.
    """
    from accelerate.tracking import get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    missing = [name for name in names if name not in available]
    if missing:
        raise TrackerNotInstalledError(
            f"report_to names {', '.join(missing)}, which is not installed in this environment. "
            f"Install it (`{sys.executable} -m pip install {' '.join(missing)}`) or remove it from report_to "
            "(e.g. report_to=[tensorboard])."
        )


# Trackers that name each run get the run folder's name.
_RUN_NAME_KEYS = {"wandb": "name", "mlflow": "run_name", "swanlab": "experiment_name"}


def start_trackers(accelerator: Accelerator, project: str, hparams: dict[str, Any], run_name: str) -> None:
    """Start the ``report_to`` trackers and store the run's settings in each, one entry per run.

    TensorBoard gets the hparams in its own event file: Accelerate's ``store_init_configuration`` there
    (``SummaryWriter.add_hparams``) writes them into a second, time-stamped folder, which TensorBoard
    lists as a second run.
    """
    init_kwargs = {tracker: {key: run_name} for tracker, key in _RUN_NAME_KEYS.items()}
    accelerator.init_trackers(project, init_kwargs=init_kwargs)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            from torch.utils.tensorboard.summary import hparams as hparams_summaries

            for summary in hparams_summaries(hparams, metric_dict={}):
                tracker.writer.file_writer.add_summary(summary)
            tracker.writer.flush()
        else:
            tracker.store_init_configuration(hparams)


def launcher_options(pid: int | None = None) -> dict[str, str] | None:
    """The options given to the ``accelerate launch`` that started this process, or ``None``.

    ``accelerate launch`` starts the training processes as its children, so its command line is the
    parent's (read from ``/proc``, i.e. on Linux; elsewhere, and under ``python``/``torchrun``, ``None``).
    Options before the training script only: ``{"num_processes": "2", "cpu": ""}``.
    """
    try:
        raw = Path(f"/proc/{pid or os.getppid()}/cmdline").read_bytes()
    except OSError:
        return None
    argv = [a for a in raw.decode(errors="replace").split("\0") if a]
    for i, arg in enumerate(argv):
        if arg == "accelerate.commands.launch":
            rest = argv[i + 1 :]
            break
        if Path(arg).name == "accelerate" and argv[i + 1 : i + 2] == ["launch"]:
            rest = argv[i + 2 :]
            break
    else:
        return None
    options: dict[str, str] = {}
    for j, arg in enumerate(rest):
        if not arg.startswith("--"):
            if arg.endswith(".py"):
                break  # the training script: what follows is its own command line
            continue  # the value of the previous option
        name, eq, value = arg[2:].partition("=")
        if not eq and j + 1 < len(rest) and not rest[j + 1].startswith("-") and not rest[j + 1].endswith(".py"):
            value = rest[j + 1]
        options[name.replace("-", "_")] = value
    return options


def accelerate_config_file(options: dict[str, str] | None) -> tuple[str | None, dict[str, Any]]:
    """The saved ``accelerate config`` that ``accelerate launch`` read, and its settings (``(None, {})`` if none).

    As Accelerate 1.x does: ``--config_file``, else the default file unless ``--cpu`` was given.
    """
    if options is None:
        return None, {}
    path = options.get("config_file")
    if path is None:
        from accelerate.commands.config import default_config_file

        if "cpu" in options or not os.path.isfile(default_config_file):
            return None, {}
        path = default_config_file
    try:
        import yaml

        values = yaml.safe_load(Path(path).read_text()) or {}  # JSON is YAML too
    except (OSError, ValueError):
        return path, {}
    return path, values if isinstance(values, dict) else {}


def launch_sources(
    run_precision: str | None,
    options: dict[str, str] | None,
    config_file: str | None,
    file_values: dict[str, Any],
    env: dict[str, str],
) -> dict[str, str]:
    """Where the process count, machine count, device type and precision of this run came from.

    One of: ``run config`` (precision written in the run's config), ``launcher flag``, ``accelerate config
    <file>``, ``env <VAR>`` (started without ``accelerate launch``, e.g. torchrun or exported variables) or
    ``detection`` (Accelerate's own: visible devices, one machine, no mixed precision).
    """
    launched = options is not None
    saved = f"accelerate config {config_file}"

    def source(flag: str, key: str, env_var: str) -> str:
        if launched and flag in options:
            return "launcher flag"
        if launched and file_values.get(key) is not None:
            return saved
        if not launched and env_var in env:
            return f"env {env_var}"
        return "detection"

    device = source("cpu", "use_cpu", "ACCELERATE_USE_CPU")
    if device == saved and not file_values.get("use_cpu"):
        device = "detection"  # a saved config decides the device only when it asks for the CPU
    precision = source("mixed_precision", "mixed_precision", "ACCELERATE_MIXED_PRECISION")
    if run_precision not in (None, "auto"):
        precision = "run config"
    return {
        "processes": source("num_processes", "num_processes", "WORLD_SIZE"),
        "machines": source("num_machines", "num_machines", "GROUP_WORLD_SIZE"),
        "device": device,
        "precision": precision,
    }


def unused_gpu_warning(visible: int, used: int) -> str | None:
    """A warning when this machine has more GPUs than the run uses on it (``None`` when all are used)."""
    if visible <= used:
        return None
    return (
        f"warning: {visible} GPUs are visible on this machine but the run uses {used}. To use all of them, run "
        f'`accelerate config` once (multi-GPU, {visible} processes) or pass LAUNCH_ARGS="--multi_gpu '
        f'--num_processes {visible}"; set CUDA_VISIBLE_DEVICES to silence this on a shared machine.'
    )


def gpu_backend_on_cpu_warning(data_backend: str, device_type: str) -> str | None:
    """A warning when ``data_backend=gpu`` runs on a device without nvJPEG (``None`` otherwise)."""
    if data_backend != "gpu" or device_type == "cuda":
        return None
    return (
        f"warning: data_backend=gpu decodes and crops every batch in the training process; on a {device_type} "
        "device that runs on the host, one batch at a time, and is slower than the pil backend's parallel "
        "workers. Use data_backend=pil here (the gpu backend is for a CUDA device with too few host cores)."
    )


def launch_report(accelerator: Accelerator, mixed_precision: str | None, data_backend: str) -> list[str]:
    """What a run prints at start: processes, machines, device, precision and the source of each; then
    warnings about idle GPUs and a gpu data backend without a GPU."""
    import torch

    options = launcher_options()
    config_file, file_values = accelerate_config_file(options)
    sources = launch_sources(mixed_precision, options, config_file, file_values, dict(os.environ))
    machines = int(os.environ.get("GROUP_WORLD_SIZE", "1"))  # torchrun's node count (1: one machine)
    launcher_precision = os.environ.get("ACCELERATE_MIXED_PRECISION")
    overridden = (
        f"; overrides the launcher's {launcher_precision}"
        if sources["precision"] == "run config" and launcher_precision not in (None, accelerator.mixed_precision)
        else ""
    )
    line = (
        f"launch: {accelerator.num_processes} process(es) ({sources['processes']}), {machines} machine(s) "
        f"({sources['machines']}), device {accelerator.device.type} ({sources['device']}), precision "
        f"{accelerator.mixed_precision} ({sources['precision']}{overridden})"
    )
    used_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if accelerator.device.type == "cuda" else 0
    notices = [
        unused_gpu_warning(torch.cuda.device_count() if torch.cuda.is_available() else 0, used_here),
        gpu_backend_on_cpu_warning(data_backend, accelerator.device.type),
    ]
    return [line, *filter(None, notices)]


def make_accelerator(config: Any, run_dir: Path) -> Accelerator:
    """The run's :class:`~accelerate.Accelerator`; raises when the launcher's process count and Accelerate's differ."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration

    from .config import accelerator_precision

    # `accelerate launch --multi_gpu --num_processes N` on a machine without CUDA: Accelerate 1.x only
    # picks the multi-process CPU (gloo) mode when told `cpu=True`; otherwise every process believes
    # it is a lone main process and they all write the same files.
    cpu_processes = "LOCAL_RANK" in os.environ and not torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=cpu_processes,
        # Batches are copied from pinned memory while the device computes (see data.make_loader).
        dataloader_config=DataLoaderConfiguration(non_blocking=True),
        # auto: None, so the launcher's choice (ACCELERATE_MIXED_PRECISION) stands; explicit values win.
        mixed_precision=accelerator_precision(config.mixed_precision),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=list(config.report_to) or None,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir)),
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise RuntimeError(
            f"launched as {launched} processes but Accelerate runs {accelerator.num_processes}; "
            "check the `accelerate launch` options (e.g. --multi_gpu --num_processes N)"
        )
    return accelerator
