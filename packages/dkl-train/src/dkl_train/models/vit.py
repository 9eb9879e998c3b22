"""ViT-Small with patch 2 for 32x32 images (USB's ``vit_small_patch2_32``), built with timm.

USB (``semilearn/nets/vit/vit.py``) defines its own ViT whose parameter names equal timm's
``VisionTransformer``: ``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.{i}.{norm1,
attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``, ``head`` (class-token pooling, qkv bias,
LayerNorm eps 1e-6, no layer scale). USB's pretrained file
``vit_small_patch2_32_mlp_im_1k_32.pth`` keeps the weights under ``"model"``; USB's loader drops
top-level ``head``/``fc``/``classifier``/``mlp`` keys and resizes ``pos_embed``.
:func:`adapt_usb_state_dict` does the same, but lists what it drops, and the loader then insists
that everything else matches (``load_checkpoint(model, path, fmt="usb")``).
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn

from .registry import register_model

# Top-level modules of a pretraining checkpoint that are not part of the fine-tuned backbone.
USB_DROPPED_PREFIXES = ("head.", "fc.", "classifier.", "mlp.")
# Keys the fine-tuning model initialises itself after a USB load.
USB_FRESH_KEYS = ("head.weight", "head.bias")


@register_model("vit_small_patch2_32")
def vit_small_patch2_32(num_classes: int, drop_path_rate: float = 0.2, **kwargs: Any) -> nn.Module:
    """ViT-S/2 at 32x32: dim 384, depth 12, 6 heads, MLP ratio 4 (USB's settings, drop path 0.2).

    ``drop_path`` is accepted as an alias of ``drop_path_rate``; other keyword arguments go to
    timm's :class:`~timm.models.vision_transformer.VisionTransformer`.
    """
    from timm.models.vision_transformer import VisionTransformer  # timm is imported only when needed

    drop_path_rate = kwargs.pop("drop_path", drop_path_rate)
    options: dict[str, Any] = {"img_size": 32, "patch_size": 2, "embed_dim": 384, "depth": 12, "num_heads": 6}
    options |= {"mlp_ratio": 4.0, "qkv_bias": True, "global_pool": "token"}
    options |= kwargs
    return VisionTransformer(num_classes=num_classes, drop_path_rate=drop_path_rate, **options)


def adapt_usb_state_dict(state: dict[str, Tensor], model: nn.Module) -> tuple[dict[str, Tensor], list[str]]:
    """Drop the pretraining heads and resample ``pos_embed`` to the model's patch grid."""
    from timm.layers import resample_abs_pos_embed

    dropped = sorted(k for k in state if k.startswith(USB_DROPPED_PREFIXES))
    state = {k: v for k, v in state.items() if k not in dropped}
    notes = [f"dropped {len(dropped)} pretraining head tensor(s): {', '.join(dropped)}"] if dropped else []
    notes.append(f"{', '.join(USB_FRESH_KEYS)} keep their fresh initialisation")
    target = getattr(model, "pos_embed", None)
    if "pos_embed" in state and target is not None and state["pos_embed"].shape != target.shape:
        prefix_tokens = getattr(model, "num_prefix_tokens", 1)
        old_grid = math.isqrt(state["pos_embed"].shape[1] - prefix_tokens)
        new_grid = list(model.patch_embed.grid_size)
        state["pos_embed"] = resample_abs_pos_embed(
            state["pos_embed"],
            new_size=new_grid,
            old_size=[old_grid, old_grid],
            num_prefix_tokens=prefix_tokens,
            antialias=False,  # USB interpolates with plain bicubic (F.interpolate, no antialiasing)
        )
        notes.append(f"pos_embed resampled from {old_grid}x{old_grid} to {new_grid[0]}x{new_grid[1]} patches")
    return state, notes
