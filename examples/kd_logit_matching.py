"""A distillation method of your own, in your own file: logit matching (Ba & Caruana, NeurIPS 2014).

    .venv/bin/accelerate launch recipes/kd/train.py --config examples/digits_logit_matching.yaml

The KD recipe loads it from ``method=examples/kd_logit_matching.py:LogitMatching`` (a file path, or a
module importable from the working directory as ``my_package.my_module:LogitMatching``); nothing in
the project is edited. The class states the settings it reads; the recipe refuses any other method's
(``kd_weight`` here), lists these under ``--help`` only for registered methods, and saves them in
``config.yaml``, so ``resume=true`` and ``make report`` work as for the built-in methods.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from dkl_recipe_kd.methods import Distiller, TeacherSettings
from torch import Tensor


@dataclass
class LogitMatchingSettings(TeacherSettings):
    """The teacher's settings (every distiller reads them) plus this method's own."""

    logit_mse_weight: float = 1.0  # weight of the mean squared difference of the logits


class LogitMatching(Distiller):
    """``label_ce_weight * CE(s, y) + ramp * logit_mse_weight * mean((s - t)^2)``."""

    name = "logit_matching"  # the loss term's name in logs and results.json
    Settings = LogitMatchingSettings

    def distill(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> tuple[Tensor, float]:
        return F.mse_loss(student_logits.float(), teacher_logits), self.settings.logit_mse_weight
