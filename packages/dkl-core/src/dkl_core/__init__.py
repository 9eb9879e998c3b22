"""dkl-core: the DKL loss family (KL, DKL, IKL, GKL, DKD), ReviewKD's HCL and the class-wise prior, also fused
with a language model's output layer.

Depends on torch alone. See each function's docstring for the formula, the paper and the shapes.
"""

from .losses import (
    DKDLoss,
    DKLLoss,
    GKLLoss,
    HCLLoss,
    IKLLoss,
    KLLoss,
    dkd_loss,
    dkl_loss,
    fused_linear_dkd_loss,
    fused_linear_gkl_loss,
    fused_linear_ikl_loss,
    fused_linear_kl_loss,
    gkl_loss,
    hcl_loss,
    ikl_loss,
    kl_loss,
)  # fmt: skip
from .prior import ClassPrior, TopKClassPrior, TopKRows

__version__ = "0.2.0"

__all__ = [
    "ClassPrior", "TopKClassPrior", "TopKRows",
    "DKDLoss", "DKLLoss", "GKLLoss", "HCLLoss", "IKLLoss", "KLLoss",
    "dkd_loss", "dkl_loss", "gkl_loss", "hcl_loss", "ikl_loss", "kl_loss",
    "fused_linear_dkd_loss", "fused_linear_gkl_loss", "fused_linear_ikl_loss", "fused_linear_kl_loss",
]  # fmt: skip
