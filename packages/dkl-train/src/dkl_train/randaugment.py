"""The strong augmentation of FixMatch as USB runs it: RandAugment with a random magnitude per op, then Cutout;
USB's weak and strong views (:func:`weak_transform`, :func:`strong_transform`).

USB's ``RandAugment(3, 5)`` (``semilearn/datasets/augmentation/randaugment.py``, used unchanged by the
DKL authors' semi-supervised code) is not torchvision's ``RandAugment``:

- it picks ``num_ops`` ops *with replacement*, uniformly from the 14 ops of :data:`OPS`;
- each op draws its own magnitude uniformly over that op's whole range (the ``m`` argument is unused);
  the signed ops (rotate, shear, translate) draw the sign as part of the range, and the enhance ops
  (brightness, colour, contrast, sharpness) draw factors in ``[0.05, 0.95]``, i.e. they only weaken;
- afterwards it *always* pastes a grey (125, 123, 114) square whose side is ``U(0, 0.5)`` times the
  image width (clipped at the borders).

:class:`USBRandAugment` does the same with ``torchvision.transforms.v2.functional`` ops. On PIL
images (what the recipes feed it, after the crop and flip) every op is pixel-identical to USB's PIL
call for the same op and magnitude (``tests/unit/test_randaugment.py`` checks each one). ``uint8``
image tensors go through torchvision's tensor kernels, which can differ from PIL's by rounding of the
resampling grid (rotate).

Every random number comes from ``torch``'s global generator, drawn in a fixed order
(:meth:`USBRandAugment.sample`), so the view is a pure function of the generator's state: inside
:class:`~dkl_train.data.TransformedDataset`, which seeds it per ``(seed, epoch, index)``, a sample's
strong view is the same in the main process or a worker, on one process or several, before or after
a resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from .data import DatasetSpec, ImageOutput, tensor_steps

# (name, low, high): the magnitude of an application is U(low, high). Order and ranges as USB's list.
OPS: tuple[tuple[str, float, float], ...] = (
    ("auto_contrast", 0.0, 1.0),
    ("brightness", 0.05, 0.95),
    ("color", 0.05, 0.95),
    ("contrast", 0.05, 0.95),
    ("equalize", 0.0, 1.0),
    ("identity", 0.0, 1.0),
    ("posterize", 4.0, 8.0),  # bits = int(magnitude): 4..7
    ("rotate", -30.0, 30.0),  # degrees, counter-clockwise about the centre
    ("sharpness", 0.05, 0.95),
    ("shear_x", -0.3, 0.3),  # x_in = x + v * y (about the top-left corner, as PIL's affine)
    ("shear_y", -0.3, 0.3),  # y_in = y + v * x
    ("solarize", 0.0, 256.0),  # invert the pixels >= threshold
    ("translate_x", -0.3, 0.3),  # fraction of the width: x_in = x + v * width
    ("translate_y", -0.3, 0.3),  # fraction of the height
)
OP_NAMES = tuple(name for name, _, _ in OPS)
CUTOUT_FILL = (125, 123, 114)  # USB's grey


@dataclass(frozen=True)
class Cutout:
    """The pasted square: pixel rows ``top..top+height-1`` and columns ``left..left+width-1``."""

    top: int
    left: int
    height: int
    width: int


@dataclass(frozen=True)
class Plan:
    """One application's random draws: the ops with their magnitudes, and the Cutout square (or ``None``)."""

    ops: tuple[tuple[str, float], ...]
    cutout: Cutout | None


def _size(image: Any) -> tuple[int, int]:
    """``(width, height)`` of a PIL image or a ``[..., H, W]`` tensor."""
    if isinstance(image, Image.Image):
        return image.size
    return int(image.shape[-1]), int(image.shape[-2])


def apply_op(image: Any, name: str, magnitude: float) -> Any:
    """Op ``name`` of :data:`OPS` at ``magnitude`` on a PIL image or a ``uint8`` image tensor."""
    width, height = _size(image)
    nearest = InterpolationMode.NEAREST
    if name == "identity":
        return image
    if name == "auto_contrast":
        return F.autocontrast(image)
    if name == "equalize":
        return F.equalize(image)
    if name == "brightness":
        return F.adjust_brightness(image, magnitude)
    if name == "color":
        return F.adjust_saturation(image, magnitude)
    if name == "contrast":
        return F.adjust_contrast(image, magnitude)
    if name == "sharpness":
        return F.adjust_sharpness(image, magnitude)
    if name == "posterize":
        return F.posterize(image, max(1, int(magnitude)))
    if name == "solarize":
        # Thresholds above 255 invert nothing (PIL accepts them; torchvision's tensor kernel refuses them).
        return image if magnitude > 255 else F.solarize(image, magnitude)
    if name == "rotate":
        return F.rotate(image, magnitude, interpolation=nearest)
    if name in ("shear_x", "shear_y"):
        angle = math.degrees(math.atan(magnitude))
        shear = [angle, 0.0] if name == "shear_x" else [0.0, angle]
        return F.affine(image, angle=0.0, translate=[0.0, 0.0], scale=1.0, shear=shear,
                        interpolation=nearest, center=[0.0, 0.0])  # fmt: skip
    if name in ("translate_x", "translate_y"):
        # PIL's affine samples the input at x + v * width: the content moves by -v * width.
        shift = [-magnitude * width, 0.0] if name == "translate_x" else [0.0, -magnitude * height]
        return F.affine(image, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0], interpolation=nearest)
    raise ValueError(f"unknown RandAugment op {name!r}; known: {', '.join(OP_NAMES)}")


def apply_cutout(image: Any, square: Cutout, fill: tuple[int, int, int] = CUTOUT_FILL) -> Any:
    """Paint ``square`` with ``fill`` (0..255 per channel) on a PIL image or a ``uint8`` image tensor."""
    value = torch.tensor(fill, dtype=torch.uint8).view(-1, 1, 1)
    return F.erase(image, square.top, square.left, square.height, square.width, value)


class USBRandAugment:
    """USB's RandAugment: ``num_ops`` ops with uniformly drawn magnitudes, then a Cutout of side ``U(0, cutout)``.

    Args:
        num_ops: ops applied one after the other (USB's strong view: 3), drawn with replacement.
        cutout: the Cutout side is ``U(0, cutout)`` times the image width (USB: 0.5); 0 disables it.
        fill: the Cutout colour.

    Takes a PIL image or a ``[C, H, W]`` ``uint8`` tensor and returns the same type.
    """

    def __init__(self, num_ops: int = 3, cutout: float = 0.5, fill: tuple[int, int, int] = CUTOUT_FILL) -> None:
        if num_ops < 0:
            raise ValueError(f"num_ops must be >= 0, got {num_ops}")
        if not 0.0 <= cutout <= 1.0:
            raise ValueError(f"cutout is a fraction of the image width in [0, 1] (USB: 0.5), got {cutout}")
        self.num_ops, self.cutout, self.fill = num_ops, cutout, tuple(fill)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_ops={self.num_ops}, cutout={self.cutout})"

    def sample(self, width: int, height: int) -> Plan:
        """Draw one application's ops, magnitudes and Cutout square from torch's global generator.

        Draw order: the op indices, the magnitudes, the Cutout side, its centre x, its centre y.
        The square follows USB's arithmetic: side ``s = U * cutout * width``; centre
        ``c = size + (1 - size) * U`` (numpy's ``uniform(size)``, i.e. low=size, high=1, so in
        ``(1, size]``); corner ``int(max(0, c - s / 2))``; PIL fills both ends of the rectangle
        ``[corner, min(size, corner + s)]`` after truncating to integers, clipped to the image.
        """
        indices = torch.randint(len(OPS), (self.num_ops,)).tolist()
        uniforms = torch.rand(self.num_ops, dtype=torch.float64).tolist()
        ops = tuple(
            (OPS[i][0], OPS[i][1] + (OPS[i][2] - OPS[i][1]) * u) for i, u in zip(indices, uniforms, strict=True)
        )
        side_u, x_u, y_u = torch.rand(3, dtype=torch.float64).tolist()
        side = side_u * self.cutout * width
        if side <= 0:
            return Plan(ops, None)

        def span(u: float, size: int) -> tuple[int, int]:
            start = int(max(0.0, size + (1 - size) * u - side / 2))
            last = min(int(min(size, start + side)), size - 1)  # inclusive end
            return start, last - start + 1

        left, w = span(x_u, width)
        top, h = span(y_u, height)
        return Plan(ops, Cutout(top, left, h, w))

    def apply(self, image: Any, plan: Plan) -> Any:
        """Apply a drawn :class:`Plan` to ``image``."""
        for name, magnitude in plan.ops:
            image = apply_op(image, name, magnitude)
        if plan.cutout is not None:
            image = apply_cutout(image, plan.cutout, self.fill)
        return image

    def __call__(self, image: Any) -> Any:
        if isinstance(image, torch.Tensor) and image.dtype != torch.uint8:
            raise TypeError(
                f"USBRandAugment takes PIL images or uint8 tensors (its ops are defined on 0..255 pixels), got a "
                f"{image.dtype} tensor: place it before ToDtype/ToTensor in the pipeline"
            )
        return self.apply(image, self.sample(*_size(image)))


# USB's two views of an image (the SSL recipe): the weak one, and the strong one that adds the RandAugment above.


def weak_transform(spec: DatasetSpec, *, output: ImageOutput = "float") -> v2.Compose:
    """USB's weak view: RandomCrop with reflect padding of 1/8 of the side (4 px at 32), horizontal flip.

    ``output="uint8"`` (training) leaves scaling and normalisation to the device (``DeviceNormalize``).
    """
    size = spec.image_size
    return v2.Compose(
        [
            v2.RandomCrop(size, padding=size // 8, padding_mode="reflect"),
            v2.RandomHorizontalFlip(),
            *tensor_steps(spec, output=output),
        ]
    )


def strong_transform(
    spec: DatasetSpec, *, num_ops: int = 3, cutout: float = 0.5, output: ImageOutput = "float"
) -> v2.Compose:
    """USB's strong view: the weak view's crop and flip, then USB's RandAugment and Cutout on the PIL image."""
    size = spec.image_size
    return v2.Compose(
        [
            v2.RandomCrop(size, padding=size // 8, padding_mode="reflect"),
            v2.RandomHorizontalFlip(),
            USBRandAugment(num_ops=num_ops, cutout=cutout),
            *tensor_steps(spec, output=output),
        ]
    )
