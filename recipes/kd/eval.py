"""Evaluate a trained KD student (its saved ``model.pth``) on the test set and write ``eval.json``.

    accelerate launch recipes/kd/eval.py --config CONFIG [--weights FILE] [key=value ...]

By default the weights are ``<output_dir>/model.pth`` of the config's run, saved at the end of
``train.py``. Evaluating the saved file again, in a fresh process, checks that the artefact holds
what the training log reported; ``make reproduce-kd`` runs it after each seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration
from dkl_recipe_kd.train import KDConfig  # the recipe's schema (this folder is the installed package)

from dkl_train.config import ConfigError, accelerator_precision, load_config
from dkl_train.data import DeviceLoader, build_datasets, make_loader
from dkl_train.errors import report_user_errors
from dkl_train.evaluation import evaluate
from dkl_train.results import write_json_atomic


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--weights", default=None, help="weights file (default: <output_dir>/model.pth)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    try:
        config = load_config(KDConfig, args.config, args.overrides)
    except ConfigError as err:
        parser.exit(2, f"config error: {err}\n")
    with report_user_errors():
        evaluate_weights(config, args.config, Path(args.weights or Path(config.output_dir) / "model.pth"))


def evaluate_weights(config: KDConfig, config_file: str, weights: Path) -> None:
    """Top-1/top-5 of ``weights`` on the test set, written to ``<output_dir>/eval.json``."""
    from dkl_train.models import create_model

    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found; train first: make train-kd CONFIG={config_file}")
    accelerator = Accelerator(
        mixed_precision=accelerator_precision(config.mixed_precision),
        dataloader_config=DataLoaderConfiguration(non_blocking=True),
    )
    _, test_set, spec = build_datasets(config)
    model = create_model(config.student, spec.num_classes, checkpoint=str(weights), **config.student_kwargs)
    loader = DeviceLoader(  # uint8 batches, normalised on the device (as in training)
        accelerator.prepare(make_loader(test_set, config.eval_batch_size, train=False, num_workers=config.num_workers)),
        test_set.batch_transform,
    )
    metrics = evaluate(model.to(accelerator.device), loader, accelerator, progress="eval")
    if accelerator.is_main_process:
        payload = {"weights": str(weights), "student": config.student, "dataset": config.dataset, **metrics}
        write_json_atomic(payload, Path(config.output_dir) / "eval.json")
        print(f"{config.student} ({weights}): top-1 {metrics['top1']:.2f}%, top-5 {metrics['top5']:.2f}%")


if __name__ == "__main__":
    main()
