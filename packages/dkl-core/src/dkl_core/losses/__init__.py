"""The DKL loss family and its baselines (KD, DKD, ReviewKD's HCL). Every function is exact and O(B*C); see each docstring."""

from .decoupled import DKLLoss, GKLLoss, IKLLoss, dkl_loss, gkl_loss, ikl_loss
from .dkd import DKDLoss, dkd_loss
from .hcl import HCLLoss, hcl_loss
from .kl import KLLoss, kl_loss

__all__ = [
    "DKDLoss", "DKLLoss", "GKLLoss", "HCLLoss", "IKLLoss", "KLLoss",
    "dkd_loss", "dkl_loss", "gkl_loss", "hcl_loss", "ikl_loss", "kl_loss",
]  # fmt: skip
