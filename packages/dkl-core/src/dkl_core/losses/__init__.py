"""The DKL loss family and its baselines (KD, DKD, ReviewKD's HCL). Every function is exact and O(B*C); the ``fused_linear_*`` losses also never hold the ``[N, V]`` logits."""

from .decoupled import DKLLoss, GKLLoss, IKLLoss, dkl_loss, gkl_loss, ikl_loss
from .dkd import DKDLoss, dkd_loss
from .fused_linear import fused_linear_dkd_loss, fused_linear_gkl_loss, fused_linear_ikl_loss, fused_linear_kl_loss
from .hcl import HCLLoss, hcl_loss
from .kl import KLLoss, kl_loss

__all__ = [
    "DKDLoss", "DKLLoss", "GKLLoss", "HCLLoss", "IKLLoss", "KLLoss",
    "dkd_loss", "dkl_loss", "gkl_loss", "hcl_loss", "ikl_loss", "kl_loss",
    "fused_linear_dkd_loss", "fused_linear_gkl_loss", "fused_linear_ikl_loss", "fused_linear_kl_loss",
]  # fmt: skip
