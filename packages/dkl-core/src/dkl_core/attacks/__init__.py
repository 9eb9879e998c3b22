"""Attacks for adversarial training and robustness evaluation.

* :func:`pgd`: PGD in the L-inf and L2 balls with CE, KL (TRADES), CW or any callable attack loss.
* :func:`inner_maximization`, :func:`attack_schedule`: the IKL/GKL inner maximisation with the
  released code's epsilon ramp and step budgets.
* :class:`AdversarialWeightPerturbation`: AWP (Wu et al. 2020) with an exact ``restore()``.
* :func:`autoattack_evaluation`: AutoAttack via the official ``pyautoattack`` (optional extra),
  in eval mode and float32, resumable and split across processes.
* :func:`robust_accuracy`: PGD-20 / CW-20 for per-epoch validation.
"""

from .autoattack import AutoAttackResult, autoattack_evaluation
from .awp import AdversarialWeightPerturbation
from .inner_max import AttackSchedule, attack_schedule, ikl_attack_loss, inner_maximization, ramped_epsilon
from .pgd import (
    AttackLoss,
    cross_entropy_attack_loss,
    cw_attack_loss,
    initial_point,
    kl_attack_loss,
    pgd,
    project,
)
from .robust_accuracy import RobustAccuracy, robust_accuracy

__all__ = [
    "AdversarialWeightPerturbation",
    "AttackLoss",
    "AttackSchedule",
    "AutoAttackResult",
    "RobustAccuracy",
    "attack_schedule",
    "autoattack_evaluation",
    "cross_entropy_attack_loss",
    "cw_attack_loss",
    "ikl_attack_loss",
    "initial_point",
    "inner_maximization",
    "kl_attack_loss",
    "pgd",
    "project",
    "ramped_epsilon",
    "robust_accuracy",
]
