"""Knowledge distillation with the DKL loss family: ce, kd, dkd, reviewkd, ikl, gkl (CIFAR-100, ImageNet, digits).

    accelerate launch recipes/kd/train.py --config recipes/kd/configs/cifar100_resnet32x4_resnet8x4_ikl.yaml

Each method is a class in :mod:`dkl_recipe_kd.methods` (its formula, its settings); this script adds the
data and the models and runs the shared loop, which never asks which method it runs. Your own method:
``method=my_methods.py:MyMethod`` (a subclass of :class:`dkl_recipe_kd.methods.KDMethod`; CONTRIBUTING.md).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, ClassVar

from accelerate.utils import set_seed
from dkl_recipe_kd.methods import KD_METHODS, KDMethod, TeacherError

from dkl_train.config import EpochConfig, chosen_methods, parse_config
from dkl_train.data import build_datasets, load_prepared
from dkl_train.errors import report_user_errors
from dkl_train.evaluation import evaluate
from dkl_train.optim import build_optimizer
from dkl_train.training import Run

METHODS = KD_METHODS.names()  # the paper's column order
__all__ = ["METHODS", "KDConfig", "TeacherError", "build_method", "main", "train"]


@dataclass
class KDConfig(EpochConfig):
    """Settings of one distillation run: these, plus the chosen method's own (``--help`` lists them per method)."""

    recipe: ClassVar[str] = "kd"
    components: ClassVar[dict] = {"method": KD_METHODS}

    method: str = "ikl"  # the training method: ce | kd | dkd | reviewkd | ikl | gkl, or your own file.py:Class
    student: str = "resnet8x4"  # the model trained (with method=ce: the teacher being trained)
    student_kwargs: dict[str, Any] = field(default_factory=dict)  # architecture options for create_model
    paper_top1: float | None = None  # the paper's number this config should reproduce


def build_method(config: KDConfig) -> KDMethod:
    """The config's method, built from its own settings."""
    return chosen_methods(config)["method"].from_config(config)


# ----------------------------------------------------------------------------------------------
# Training


def train(config: KDConfig) -> dict[str, Any]:
    """Run the whole recipe; returns the ``results.json`` payload."""
    from dkl_train.models import create_model

    # Everything that can fail on the user's input fails here, before a run folder is created.
    method = build_method(config)
    method.check_inputs()
    train_set, test_set, spec = build_datasets(config)
    set_seed(config.seed)  # the student's initial weights
    student = create_model(config.student, spec.num_classes, **config.student_kwargs)
    trained = method.build(student, spec)  # what the optimiser trains: the student, plus the method's own modules

    run = Run(config)
    method.attach(run.device, run.accelerator.autocast, run.place_model)
    optimizer = build_optimizer(config, trained.parameters())
    trained, optimizer = run.prepare(trained, optimizer)
    student = method.student(run.accelerator.unwrap_model(trained))
    train_loader, test_loader = run.train_loader(train_set), run.eval_loader(test_set)
    run.register_for_checkpointing(*method.state())
    run.build_scheduler(optimizer, train_loader)  # registered last: the objects before keep their checkpoint files
    run.resume()

    extra: dict[str, Any] = {"method": config.method, "paper_top1": config.paper_top1}
    extra |= method.results(lambda model: evaluate(model, test_loader, run.accelerator, progress="teacher"), run.print)

    def compute_loss(batch: dict[str, Any]) -> tuple[Any, dict]:
        return method.loss(trained, batch)

    for epoch in run.periods():
        method.start_epoch(epoch)
        metrics = run.train_epoch(trained, optimizer, train_loader, compute_loss, epoch)
        method.end_epoch()
        evaluated = evaluate(student, test_loader, run.accelerator) if run.should_evaluate(epoch) else None
        run.end_epoch(epoch, metrics, evaluated)

    run.save_model(student, "model.pth", arch=config.student, num_classes=spec.num_classes)
    return run.finish(extra=extra)


def check_inputs(config: KDConfig) -> None:
    """The files a run needs exist: the teacher checkpoint and the prepared dataset (each error says what to do)."""
    build_method(config).check_inputs()
    load_prepared(config.dataset, config.data_dir)


def main(argv: list[str] | None = None) -> None:
    """``train.py --config FILE [key=value ...]``; with ``--check``, only verify the inputs (no training).

    ``make reproduce-kd`` runs ``--check`` first, without ``accelerate launch``, so that a missing
    teacher or dataset is reported as one clear message rather than under the launcher's traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    check_only = "--check" in argv
    config = parse_config(KDConfig, [a for a in argv if a != "--check"], description=__doc__.splitlines()[0])
    with report_user_errors():
        if check_only:
            check_inputs(config)
            checkpoint = getattr(config, "teacher_checkpoint", None)
            teacher = f"teacher {checkpoint} and " if checkpoint else ""
            print(f"inputs in place: {teacher}dataset {config.dataset} in {config.data_dir}")
        else:
            train(config)


if __name__ == "__main__":
    main()
