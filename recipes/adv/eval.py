"""AutoAttack evaluation of adversarially trained models: a training run's weights, or any RobustBench-format checkpoint.

    accelerate launch recipes/adv/eval.py run_dir=runs/adv/cifar10_wrn34_ikl
    accelerate launch recipes/adv/eval.py --config recipes/adv/configs/eval_cifar10_wrn28_silu.yaml checkpoint=PATH

Standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square; L-inf eps 8/255) through dkl-core's wrapper
(:func:`dkl_core.attacks.autoattack_evaluation`): eval mode and float32 forced, the test set split
over the processes of ``accelerate launch`` (``--num_processes N``), and resumable: every finished
chunk is saved under ``<run>/autoattack/<weights>.pt``, so an interrupted evaluation started again
with the same command skips what is done.

A run folder can hold up to three sets of weights (written by ``train.py``): ``raw`` (the last
epoch, ``model.pth``), ``checkpoint_average`` (the exponential average over epochs, as the released
models were made, ``model_avg.pth``) and ``ema`` (``model_ema.pth``). Each one present is evaluated
and reported under its own label; the headline ``autoattack.clean`` / ``autoattack.robust`` are those
of ``autoattack.primary`` (the checkpoint average when it exists, else the raw weights).

Results go into ``<run>/results.json`` under ``autoattack`` (accuracies in %, like ``final.top1``; the
primary clean/robust pair is also copied to ``final.autoattack_clean`` / ``final.autoattack_robust``)::

    "autoattack": {"primary": "checkpoint_average", "clean": 85.3, "robust": 57.1,
                   "per_attack": {"apgd-ce": ..., "apgd-t": ..., "fab-t": ..., "square": ...},
                   "num_samples": 10000, "eps": 0.0314, "norm": "Linf", "version": "standard",
                   "paper_clean": 85.31, "paper_autoattack": 57.13,
                   "weights": {"raw": {...same keys...}, "checkpoint_average": {...}}}

For a checkpoint (``checkpoint=PATH``) the ``results.json`` is written into ``output_dir``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from dkl_recipe_adv.train import AdvConfig
from dkl_recipe_adv.weights import MODEL_FILES
from torch import nn

from dkl_core.attacks import autoattack_evaluation
from dkl_train.config import ConfigError, load_config, parse_config
from dkl_train.data import TransformedDataset, build_transform, get_spec, load_prepared
from dkl_train.errors import report_user_errors
from dkl_train.progress import say
from dkl_train.results import git_revision, read_results, write_json_atomic

WEIGHT_LABELS = tuple(MODEL_FILES)


@dataclass
class EvalConfig:
    """What to evaluate and how. Either ``run_dir`` (a training run) or ``checkpoint`` (any compatible file)."""

    run_dir: str | None = None  # a train.py run folder: model/dataset/eps come from its config.yaml
    checkpoint: str | None = None  # a RobustBench-format file (plain state dict, "state_dict", "model" ...)
    checkpoint_key: str | None = None  # container key of that file when not found automatically
    checkpoint_prefix: str | None = None  # a prefix every key carries ("0." for a Sequential(Normalize, net))
    model: str = "wrn_34_10"  # checkpoint mode: the architecture
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # checkpoint mode: architecture options
    dataset: str = "cifar10"  # checkpoint mode: the test set
    data_dir: str | None = None  # default: the run's data_dir ("data" in checkpoint mode)
    output_dir: str | None = None  # checkpoint mode: where results.json goes (default runs/adv/eval/<file stem>)
    weights: list[str] = field(default_factory=lambda: list(WEIGHT_LABELS))  # run mode: which ones (if present)
    eps: float | None = None  # default: the run's eps (8/255 in checkpoint mode)
    norm: Literal["Linf", "L2"] = "Linf"  # AutoAttack's threat model
    version: Literal["standard", "plus", "rand"] = "standard"  # AutoAttack's attack set
    batch_size: int = 250  # images per AutoAttack chunk (per process)
    seed: int = 0  # seed of AutoAttack's random parts
    subset: int = 0  # evaluate the first N test images only (0 = the whole test set)
    resume: bool = True  # skip chunks already recorded in the progress files
    paper_clean: float | None = None  # checkpoint mode: the published numbers, reported alongside
    paper_autoattack: float | None = None  # checkpoint mode: the published AutoAttack accuracy
    notes: str = ""  # free text kept in results.json

    def validate(self) -> None:
        if (self.run_dir is None) == (self.checkpoint is None):
            raise ConfigError("give exactly one of run_dir=RUN_FOLDER or checkpoint=FILE")
        unknown = set(self.weights) - set(WEIGHT_LABELS)
        if unknown:
            raise ConfigError(f"weights: unknown labels {sorted(unknown)}; known: {list(WEIGHT_LABELS)}")


class ImageLabelPairs(torch.utils.data.Dataset):
    """``(image, label)`` pairs from a :class:`TransformedDataset` (the form the AutoAttack wrapper reads)."""

    def __init__(self, dataset: TransformedDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        item = self.dataset[index]
        return item["image"], item["label"]


def load_pairs(dataset: str, data_dir: str, subset: int = 0, split: str = "test") -> ImageLabelPairs:
    """A split (the test split by default) in [0, 1] (no normalisation, no augmentation), optionally its first
    ``subset`` images."""
    spec = get_spec(dataset)
    images = load_prepared(dataset, data_dir)[split]
    if subset:
        images = images.select(range(min(subset, len(images))))
    return ImageLabelPairs(TransformedDataset(images, build_transform(spec, train=False, normalize=False)))


def load_model(name: str, num_classes: int, path: str | Path, **options: Any) -> nn.Module:
    """Build ``name`` and load ``path`` strictly (RobustBench files, our ``{"model": ...}`` files)."""
    from dkl_train.models import create_model, load_checkpoint

    model_kwargs = options.pop("model_kwargs", {}) or {}
    model = create_model(name, num_classes, **model_kwargs)
    load_checkpoint(model, path, **options)
    return model.eval()


def candidates(config: EvalConfig) -> tuple[Path, dict[str, Any], list[tuple[str, nn.Module]]]:
    """The output folder, the evaluation settings, and the ``(label, model)`` pairs to attack."""
    if config.run_dir is not None:
        run_dir = Path(config.run_dir)
        if not (run_dir / "config.yaml").is_file():
            raise FileNotFoundError(f"{run_dir} is not a train.py run folder (no config.yaml)")
        run = load_config(AdvConfig, run_dir / "config.yaml")
        num_classes = get_spec(run.dataset).num_classes
        models = [
            (label, load_model(run.model, num_classes, run_dir / MODEL_FILES[label], model_kwargs=run.model_kwargs))
            for label in config.weights
            if (run_dir / MODEL_FILES[label]).is_file()
        ]
        if not models:
            raise FileNotFoundError(f"{run_dir} holds none of {[MODEL_FILES[w] for w in config.weights]}; train first")
        settings = {
            "dataset": run.dataset, "data_dir": config.data_dir or run.data_dir,
            "eps": config.eps if config.eps is not None else run.eps,
            "paper_clean": run.paper_clean, "paper_autoattack": run.paper_autoattack,
        }  # fmt: skip
        return run_dir, settings, models
    path = Path(config.checkpoint)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} not found. RobustBench's Cui2023Decoupled_* / Cui2020Learnable_* files: download them with "
            "robustbench.utils.load_model(...) or from the model zoo links, then pass checkpoint=PATH"
        )
    model = load_model(
        config.model, get_spec(config.dataset).num_classes, path, model_kwargs=config.model_kwargs,
        key=config.checkpoint_key, prefix=config.checkpoint_prefix,
    )  # fmt: skip
    out = Path(config.output_dir or f"runs/adv/eval/{path.stem}")
    settings = {
        "dataset": config.dataset, "data_dir": config.data_dir or "data",
        "eps": config.eps if config.eps is not None else 8 / 255,
        "paper_clean": config.paper_clean, "paper_autoattack": config.paper_autoattack,
    }  # fmt: skip
    return out, settings, [("raw", model)]


def evaluate_autoattack(config: EvalConfig) -> dict[str, Any]:
    """Run AutoAttack on every candidate; returns the ``autoattack`` entry written to ``results.json``."""
    from accelerate import PartialState

    state = PartialState()  # initialises torch.distributed under `accelerate launch --num_processes N`
    out_dir, settings, models = candidates(config)
    data = load_pairs(settings["dataset"], settings["data_dir"], config.subset)
    progress_dir = out_dir / "autoattack"
    report: dict[str, Any] = {}
    for label, model in models:
        model.to(state.device)
        progress = progress_dir / f"{label}.pt"
        if not config.resume and state.is_main_process:
            for stale in [progress, *progress_dir.glob(f"{label}.pt.rank*")]:
                stale.unlink(missing_ok=True)
        state.wait_for_everyone()
        start = time.perf_counter()
        result = autoattack_evaluation(
            model, data, eps=settings["eps"], norm=config.norm, version=config.version,
            batch_size=config.batch_size, seed=config.seed, progress_path=progress,
            progress=say(f"AutoAttack {label}") if state.is_main_process else None,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        report[label] = {
            "clean": 100.0 * result.clean_accuracy,
            "robust": 100.0 * result.robust_accuracy,
            "per_attack": {name: 100.0 * value for name, value in result.per_attack.items()},
            "num_samples": result.num_samples,
            "seconds": seconds,
        }
        if state.is_main_process:
            print(
                f"AutoAttack ({config.version}, {config.norm} eps={settings['eps']:.5f}) {label}: "
                f"clean {report[label]['clean']:.2f}%, robust {report[label]['robust']:.2f}% "
                f"on {result.num_samples} images ({seconds:.0f} s)"
            )
        model.cpu()
    primary = "checkpoint_average" if "checkpoint_average" in report else next(iter(report))
    entry = {
        "primary": primary,
        **{k: report[primary][k] for k in ("clean", "robust", "per_attack", "num_samples")},
        "eps": settings["eps"], "norm": config.norm, "version": config.version, "seed": config.seed,
        "subset": config.subset, "num_processes": state.num_processes,
        "paper_clean": settings["paper_clean"], "paper_autoattack": settings["paper_autoattack"],
        "weights": report,
    }  # fmt: skip
    if state.is_main_process:
        print(f"results: {write_results(out_dir, entry, config)} (under 'autoattack'; final.autoattack_*)")
    state.wait_for_everyone()
    return entry


def write_results(out_dir: Path, entry: dict[str, Any], config: EvalConfig) -> Path:
    """Merge ``entry`` into ``out_dir/results.json`` under ``autoattack`` (created for a bare checkpoint);
    returns its path."""
    results_path = out_dir / "results.json"
    payload = read_results(out_dir) if results_path.is_file() else {}
    if not payload:
        payload = {"checkpoint": config.checkpoint, "model": config.model, "dataset": config.dataset}
    payload["autoattack"] = entry
    # Also next to the clean top-1 in `final`, where the report and the demo table look for final metrics.
    payload.setdefault("final", {}).update(autoattack_clean=entry["clean"], autoattack_robust=entry["robust"])
    payload.setdefault("git_revision", git_revision())
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(payload, results_path)
    return results_path


def main(argv: list[str] | None = None) -> None:
    config = parse_config(EvalConfig, argv, description=__doc__.splitlines()[0])
    with report_user_errors():
        evaluate_autoattack(config)


if __name__ == "__main__":
    main()
