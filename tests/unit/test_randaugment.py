"""USB's RandAugment + Cutout in torchvision v2 ops: each op equals the PIL call USB makes, magnitudes cover each
op's whole range, Cutout is always there, and a seed fixes the view on every path (seconds)."""

from __future__ import annotations

import numpy as np
import PIL.ImageDraw
import PIL.ImageEnhance
import PIL.ImageOps
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import functional as F

from dkl_train.data import TransformedDataset
from dkl_train.randaugment import CUTOUT_FILL, OP_NAMES, OPS, USBRandAugment, apply_op


def _image(seed: int = 0, size: int = 32) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8))


def _pil_reference(img: Image.Image, name: str, v: float) -> Image.Image:
    """The PIL call USB's RandAugment makes for op ``name`` at magnitude ``v`` (written from its semantics)."""
    w, h = img.size
    calls = {
        "auto_contrast": lambda: PIL.ImageOps.autocontrast(img),
        "brightness": lambda: PIL.ImageEnhance.Brightness(img).enhance(v),
        "color": lambda: PIL.ImageEnhance.Color(img).enhance(v),
        "contrast": lambda: PIL.ImageEnhance.Contrast(img).enhance(v),
        "equalize": lambda: PIL.ImageOps.equalize(img),
        "identity": lambda: img,
        "posterize": lambda: PIL.ImageOps.posterize(img, max(1, int(v))),
        "rotate": lambda: img.rotate(v),
        "sharpness": lambda: PIL.ImageEnhance.Sharpness(img).enhance(v),
        "shear_x": lambda: img.transform(img.size, Image.AFFINE, (1, v, 0, 0, 1, 0)),
        "shear_y": lambda: img.transform(img.size, Image.AFFINE, (1, 0, 0, v, 1, 0)),
        "solarize": lambda: PIL.ImageOps.solarize(img, v),
        "translate_x": lambda: img.transform(img.size, Image.AFFINE, (1, 0, v * w, 0, 1, 0)),
        "translate_y": lambda: img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, v * h)),
    }
    return calls[name]()


def _pil_cutout_reference(img: Image.Image, side_u: float, x_u: float, y_u: float, cutout: float) -> Image.Image:
    """USB's Cutout arithmetic with its numpy ``uniform(size)`` centre and PIL's float rectangle."""
    w, h = img.size
    v = side_u * cutout * w
    x0 = int(max(0, w + (1 - w) * x_u - v / 2.0))
    y0 = int(max(0, h + (1 - h) * y_u - v / 2.0))
    out = img.copy()
    PIL.ImageDraw.Draw(out).rectangle((x0, y0, min(w, x0 + v), min(h, y0 + v)), CUTOUT_FILL)
    return out


def test_the_op_list_and_ranges_are_usbs():
    assert len(OPS) == 14 and "invert" not in OP_NAMES
    ranges = {name: (low, high) for name, low, high in OPS}
    assert ranges["rotate"] == (-30.0, 30.0) and ranges["solarize"] == (0.0, 256.0)
    assert ranges["posterize"] == (4.0, 8.0) and ranges["translate_x"] == (-0.3, 0.3)
    assert all(ranges[n] == (0.05, 0.95) for n in ("brightness", "color", "contrast", "sharpness"))


@pytest.mark.parametrize("name", OP_NAMES)
def test_every_op_on_a_pil_image_is_pixel_identical_to_usbs_pil_call(name):
    low, high = next((lo, hi) for n, lo, hi in OPS if n == name)
    for seed, fraction in enumerate((0.0, 0.13, 0.5, 0.77, 0.999)):
        img, v = _image(seed), low + (high - low) * fraction
        ours = apply_op(img, name, v)
        assert isinstance(ours, Image.Image)
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(_pil_reference(img, name, v)), err_msg=f"{v=}")


def test_cutout_is_usbs_square_drawn_from_the_documented_draws():
    aug = USBRandAugment(num_ops=0, cutout=0.5)
    for seed in range(40):
        img = _image(seed)
        torch.manual_seed(seed)
        ours = aug(img)
        torch.manual_seed(seed)  # replay the draws in their documented order
        torch.randint(len(OPS), (0,)), torch.rand(0, dtype=torch.float64)
        side_u, x_u, y_u = torch.rand(3, dtype=torch.float64).tolist()
        expected = _pil_cutout_reference(img, side_u, x_u, y_u, 0.5)
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(expected), err_msg=f"seed {seed}")


def test_magnitudes_cover_each_ops_whole_range_and_cutout_is_always_there():
    aug = USBRandAugment(num_ops=3, cutout=0.5)
    torch.manual_seed(0)
    plans = [aug.sample(32, 32) for _ in range(3000)]
    drawn: dict[str, list[float]] = {name: [] for name in OP_NAMES}
    for plan in plans:
        assert len(plan.ops) == 3
        for name, v in plan.ops:
            drawn[name].append(v)
    for name, low, high in OPS:
        values = np.asarray(drawn[name])
        assert len(values) > 400, name  # uniform over the 14 ops: about 640 each
        assert values.min() >= low and values.max() < high, name
        # Not one fixed magnitude: the draws reach both ends of the range.
        assert values.min() < low + 0.02 * (high - low) and values.max() > high - 0.02 * (high - low), name
    assert all(p.cutout is not None for p in plans)
    sides = np.asarray([p.cutout.width for p in plans])
    assert sides.min() >= 1 and sides.max() <= 16  # side U(0, 0.5) x 32 px; PIL fills both ends: floor(side) + 1
    assert np.mean(sides >= 12) > 0.15  # large squares occur, not only tiny ones
    assert all(p.cutout is None for p in (USBRandAugment(cutout=0.0).sample(32, 32) for _ in range(20)))


def test_a_seed_fixes_the_view_and_other_seeds_change_it():
    aug, img = USBRandAugment(), _image(3)

    def view(seed: int, image=img) -> np.ndarray:
        torch.manual_seed(seed)
        return np.asarray(aug(image))

    np.testing.assert_array_equal(view(7), view(7))
    assert any(not np.array_equal(view(7), view(s)) for s in range(8, 12))
    # A uint8 tensor takes the same draws: the same plan, and for ops without resampling the same pixels.
    tensor = F.pil_to_tensor(img)
    torch.manual_seed(5)
    plan = aug.sample(32, 32)
    torch.manual_seed(5)
    assert aug.sample(*img.size) == plan
    colour_only = type(plan)(tuple((n, v) for n, v in plan.ops if n in ("brightness", "solarize", "posterize")),
                             plan.cutout)  # fmt: skip
    np.testing.assert_array_equal(
        aug.apply(tensor, colour_only).permute(1, 2, 0).numpy(), np.asarray(aug.apply(img, colour_only))
    )
    with pytest.raises(TypeError, match="PIL images or uint8 tensors"):
        aug(tensor.float() / 255)


def _augmented_tensor(image: Image.Image) -> torch.Tensor:
    return F.pil_to_tensor(USBRandAugment()(image))


def test_the_view_is_the_same_in_the_main_process_and_in_a_worker():
    rows = [{"image": _image(i), "label": i} for i in range(3)]
    dataset = TransformedDataset(rows, _augmented_tensor, seed=11)
    keys = [(2, 0), (2, 1), (5, 2)]
    main = [dataset[k]["image"] for k in keys]
    loader = DataLoader(dataset, batch_size=3, sampler=keys, num_workers=1)
    (batch,) = list(loader)
    for i in range(3):
        torch.testing.assert_close(batch["image"][i], main[i], rtol=0, atol=0)
    assert not torch.equal(dataset[(3, 0)]["image"], main[0])  # another epoch, another draw
