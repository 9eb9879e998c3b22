"""The SSL recipe's own logic: the labeled split, the views, the iteration sampler, the schedule, the losses,
and loading USB's pretrained ViT through the recipe (no training, seconds)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from dkl_recipe_ssl.methods import confidence_mask
from dkl_recipe_ssl.train import PretrainedError, SSLConfig, build_method, build_model
from PIL import Image

from dkl_core import ikl_loss
from dkl_train.config import ConfigError, build_config, load_config
from dkl_train.data import TransformedDataset, TwoViews, get_spec
from dkl_train.iterations import IterationSampler, split_indices
from dkl_train.optim import iteration_learning_rate
from dkl_train.randaugment import CUTOUT_FILL, strong_transform, weak_transform
from dkl_train.results import selected_by_validation
from tests.unit.test_models_published import random_state_dict, usb_vit_small_patch2_32

CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "ssl" / "configs"


def consistency_loss(config: SSLConfig, s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The config's consistency loss, ``mean_b(mask_b * loss_b)``."""
    return build_method(config, teacher=torch.nn.Identity()).consistency.loss(s, t, mask)


def ssl_loss(config: SSLConfig, model, teacher, labeled, unlabeled, iteration: int):
    """The loss of one iteration of the config's method (``teacher``: MeanTeacher's EMA model)."""
    return build_method(config, teacher=teacher).loss(model, labeled, unlabeled, iteration)


def digits_labels() -> list[int]:
    """An unbalanced, shuffled 10-class label list the size of the digits training split."""
    labels = [c for c in range(10) for _ in range(120 + 3 * c)]
    return np.random.default_rng(0).permutation(labels).tolist()


# ----------------------------------------------------------------------------------------------
# Split


def test_labeled_split_is_deterministic_balanced_and_seeded():
    labels = digits_labels()
    first = split_indices(labels, labels_per_class=2, val_per_class=5, seed=0)
    again = split_indices(labels, labels_per_class=2, val_per_class=5, seed=0)
    other = split_indices(labels, labels_per_class=2, val_per_class=5, seed=1)
    assert first == again
    assert first.labeled != other.labeled
    assert Counter(labels[i] for i in first.labeled) == {c: 2 for c in range(10)}
    assert Counter(labels[i] for i in first.validation) == {c: 5 for c in range(10)}
    # Validation is held out of everything the model trains on; the labeled images stay unlabeled too (USB).
    assert not set(first.validation) & set(first.labeled)
    assert not set(first.validation) & set(first.unlabeled)
    assert set(first.labeled) <= set(first.unlabeled)
    assert len(first.unlabeled) == len(labels) - 50


def test_split_without_validation_keeps_every_image_unlabeled():
    labels = digits_labels()
    split = split_indices(labels, labels_per_class=4, seed=3)
    assert split.validation == [] and split.unlabeled == list(range(len(labels)))


# ----------------------------------------------------------------------------------------------
# Views


def _image(seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_weak_and_strong_views_differ_and_are_reproducible_per_sample():
    spec = get_spec("cifar100")
    config = build_config(SSLConfig, {})
    rows = [{"image": _image(i), "label": i % 3} for i in range(4)]
    dataset = TransformedDataset(
        rows,
        TwoViews(weak_transform(spec), strong_transform(spec, num_ops=config.randaugment_ops, cutout=config.cutout)),
        seed=5,
    )
    sample = dataset[(2, 1)]
    assert set(sample) == {"weak", "strong", "label", "index"}
    assert sample["weak"].shape == sample["strong"].shape == (3, 32, 32)
    assert not torch.equal(sample["weak"], sample["strong"])
    again = dataset[(2, 1)]
    torch.testing.assert_close(again["strong"], sample["strong"], rtol=0, atol=0)
    assert not torch.equal(dataset[(3, 1)]["weak"], sample["weak"])  # another pass, another draw


def test_strong_view_always_carries_usbs_grey_cutout_square():
    spec = get_spec("cifar100")
    strong = strong_transform(spec)
    black = Image.new("RGB", (32, 32))
    # On a black image no RandAugment op makes USB's grey: those pixels are the Cutout square.
    grey = (torch.tensor(CUTOUT_FILL) / 255 - torch.tensor(spec.mean)) / torch.tensor(spec.std)
    dataset = TransformedDataset([{"image": black, "label": 0}], strong, seed=0)
    for epoch in range(12):
        view = dataset[(epoch, 0)]["image"]
        assert torch.isclose(view, grey.view(3, 1, 1), atol=1e-5).all(dim=0).any(), f"no Cutout in draw {epoch}"
    no_cutout = TransformedDataset([{"image": black, "label": 0}], strong_transform(spec, cutout=0.0))
    assert not torch.isclose(no_cutout[0]["image"], grey.view(3, 1, 1), atol=1e-5).all(dim=0).any()


def test_meanteacher_views_are_two_different_weak_draws():
    spec = get_spec("cifar100")
    weak = weak_transform(spec)
    views = TransformedDataset([{"image": _image(), "label": 0}], TwoViews(weak, weak), seed=0)
    differ = [not torch.equal(s["weak"], s["strong"]) for s in (views[(e, 0)] for e in range(8))]
    assert any(differ)


# ----------------------------------------------------------------------------------------------
# Iteration sampler: two processes read the one-process batches; resuming continues the stream


def _keys(sampler: IterationSampler) -> list[tuple[int, int]]:
    return list(iter(sampler))


def test_process_shares_make_up_the_single_process_batches():
    single = _keys(IterationSampler(10, 4, seed=0, start=0, stop=6))
    shares = [_keys(IterationSampler(10, 4, seed=0, start=0, stop=6, rank=r, num_processes=2)) for r in range(2)]
    for it in range(6):
        batch = single[it * 4 : (it + 1) * 4]
        assert shares[0][it * 2 : (it + 1) * 2] + shares[1][it * 2 : (it + 1) * 2] == batch
    # Each pass over the 10 samples is a permutation.
    assert sorted(i for e, i in single if e == 0) == list(range(10))


def test_sampler_started_late_continues_the_stream():
    full = _keys(IterationSampler(7, 3, seed=2, start=0, stop=9))
    tail = _keys(IterationSampler(7, 3, seed=2, start=4, stop=9))
    assert tail == full[4 * 3 :]


def test_sampler_refuses_a_batch_that_does_not_split():
    with pytest.raises(ValueError, match="not divisible by 2 processes"):
        IterationSampler(10, 3, seed=0, start=0, stop=1, rank=0, num_processes=2)


# ----------------------------------------------------------------------------------------------
# Config and schedule


def test_schedule_is_usb_warmup_then_seven_sixteenths_cosine():
    config = build_config(SSLConfig, {"iterations": 1000, "warmup_iters": 100, "lr": 1.0, "eval_every_iters": 100})
    assert iteration_learning_rate(config, 0) == 0.0
    assert iteration_learning_rate(config, 50) == pytest.approx(0.5)
    assert iteration_learning_rate(config, 100) == pytest.approx(1.0)
    assert iteration_learning_rate(config, 1000) == pytest.approx(math.cos(math.pi * 7 / 16))
    periods = config.periods()
    assert (periods.count, periods.eval_every, periods.step_range(9)) == (10, 1, range(900, 1000))
    assert not hasattr(config, "epochs")  # periods of iterations, not disguised as epochs


def test_config_rejects_mismatched_loss_and_bad_stop():
    with pytest.raises(ConfigError, match="takes consistency=ce or ikl"):
        build_config(SSLConfig, {"method": "fixmatch", "consistency": "mse"})
    with pytest.raises(ConfigError, match="multiple of eval_every_iters"):
        build_config(SSLConfig, {"iterations": 10, "eval_every_iters": 4, "stop_after_iters": 6})


# ----------------------------------------------------------------------------------------------
# Losses


def _logits(seed: int, batch: int = 6, classes: int = 5, scale: float = 4.0) -> torch.Tensor:
    return scale * torch.randn(batch, classes, generator=torch.Generator().manual_seed(seed))


def test_ikl_consistency_is_masked_and_averaged_over_the_whole_batch():
    config = build_config(SSLConfig, {"consistency": "ikl", "mse_weight": 0.1, "ce_weight": 1.0})
    s, t = _logits(0), _logits(1)
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    per = ikl_loss(s, t, mse_weight=0.1, ce_weight=1.0, detach_weights=False, reduction="none")
    torch.testing.assert_close(consistency_loss(config, s, t, mask), (per * mask).sum() / 6)
    assert consistency_loss(config, s, t, torch.zeros(6)) == 0


def test_released_ikl_lets_the_gradient_through_the_weights():
    s, t = _logits(0), _logits(1)
    mask = torch.ones(6)
    grads = {}
    for detach in (False, True):
        config = build_config(SSLConfig, {"consistency": "ikl", "mse_weight": 1.0, "detach_weights": detach})
        target = t.clone().requires_grad_()
        consistency_loss(config, s, target, mask).backward()
        grads[detach] = target.grad
    # Both versions send a gradient into the weak-view logits (wMSE); only the released one through the weights.
    assert grads[True].abs().sum() > 0
    assert not torch.allclose(grads[False], grads[True])


def test_fixmatch_ce_defaults_to_the_weak_views_unsharpened_probabilities():
    s, t = _logits(2), _logits(3).requires_grad_()
    mask = confidence_mask(t, 0.0)
    log_probs = torch.log_softmax(s, 1)
    default = build_config(SSLConfig, {"consistency": "ce"})
    assert default.pseudo_label == "soft"
    loss = consistency_loss(default, s, t, mask)
    # The released FixMatch: the targets are the probabilities that set the mask, with no temperature.
    torch.testing.assert_close(loss, -(torch.softmax(t.detach(), 1) * log_probs).sum(1).mean())
    assert not loss.requires_grad  # s has no grad here and the pseudo-labels are detached
    sharpened = build_config(SSLConfig, {"consistency": "ce", "pseudo_label": "sharpened", "pseudo_temperature": 0.5})
    expected = -(torch.softmax(t.detach() / 0.5, 1) * log_probs).sum(1).mean()
    torch.testing.assert_close(consistency_loss(sharpened, s, t, mask), expected)
    assert not torch.allclose(expected, loss)
    hard = build_config(SSLConfig, {"consistency": "ce", "pseudo_label": "hard"})
    torch.testing.assert_close(
        consistency_loss(hard, s, t, mask), torch.nn.functional.cross_entropy(s, t.detach().argmax(1))
    )
    with pytest.raises(ConfigError, match="pseudo_temperature must be > 0"):
        build_config(SSLConfig, {"pseudo_label": "sharpened", "pseudo_temperature": 0.0})


def test_ikl_without_wmse_is_the_soft_fixmatch_loss_value_and_gradient():
    # The released ablation (ce 1, mse 0) and the FixMatch baseline optimise the same function.
    s0, t0 = _logits(6), _logits(7)
    mask = confidence_mask(t0, 0.5)
    grads = []
    for values in ({"consistency": "ce"}, {"consistency": "ikl", "ce_weight": 1.0, "mse_weight": 0.0}):
        s, t = s0.clone().requires_grad_(), t0.clone().requires_grad_()
        loss = consistency_loss(build_config(SSLConfig, values), s, t, mask)
        loss.backward()
        grads.append((loss.detach(), s.grad, t.grad if t.grad is not None else torch.zeros_like(t)))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_meanteacher_mse_and_confidence_mask():
    config = build_config(SSLConfig, {"method": "meanteacher", "consistency": "mse"})
    s, t = _logits(4), _logits(5)
    mask = confidence_mask(t, 0.95)
    probs = torch.softmax(t, 1)
    assert torch.equal(mask, (probs.max(1).values >= 0.95).float())
    expected = ((torch.softmax(s, 1) - probs) ** 2).mean(1) * mask
    torch.testing.assert_close(consistency_loss(config, s, t, mask), expected.mean())


def _tiny_batches(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    labeled = {"image": torch.randn(4, 3, 4, 4, generator=g), "label": torch.randint(0, 5, (4,), generator=g)}
    return labeled, {"weak": torch.randn(4, 3, 4, 4, generator=g), "strong": torch.randn(4, 3, 4, 4, generator=g)}


def test_meanteacher_weighs_the_consistency_fully_from_the_first_iteration():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 5))
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 5))
    labeled, unlabeled = _tiny_batches()
    for name in ("cifar100_200_meanteacher.yaml", "cifar100_200_meanteacher_ikl.yaml"):
        config = load_config(SSLConfig, CONFIGS / name, ["p_cutoff=0.0"])
        assert build_method(config, teacher).ramp(0) == 1.0
        loss, terms = ssl_loss(config, model, teacher, labeled, unlabeled, iteration=0)
        assert terms["unsup_loss"] > 0
        torch.testing.assert_close(loss.detach(), terms["sup_loss"] + terms["unsup_loss"])
        # USB's ramp stays available as an option: off at the start, half way at 20% of the run.
        ramped = load_config(SSLConfig, CONFIGS / name, ["p_cutoff=0.0", "unsup_warmup=0.4"])
        torch.testing.assert_close(
            ssl_loss(ramped, model, teacher, labeled, unlabeled, 0)[0].detach(), terms["sup_loss"]
        )
        assert build_method(ramped, teacher).ramp(ramped.iterations // 5) == pytest.approx(0.5)


def test_paper_configs_are_the_released_settings():
    fixmatch = load_config(SSLConfig, CONFIGS / "cifar100_200_fixmatch.yaml")
    assert (fixmatch.consistency, fixmatch.pseudo_label, fixmatch.p_cutoff) == ("ce", "soft", 0.95)
    ablation = load_config(SSLConfig, CONFIGS / "cifar100_200_fixmatch_ikl_a1b0.yaml")
    released = load_config(SSLConfig, CONFIGS / "cifar100_200_fixmatch_ikl.yaml")
    assert (ablation.ce_weight, ablation.mse_weight, released.ce_weight, released.mse_weight) == (1.0, 0.0, 1.0, 0.1)
    differ = {k for k in vars(released) if getattr(released, k) != getattr(ablation, k)}
    assert differ == {"mse_weight", "paper_top1", "output_dir"}
    for path in sorted(CONFIGS.glob("cifar100_200_*.yaml")):
        config = load_config(SSLConfig, path)
        assert (config.randaugment_ops, config.cutout, config.unsup_warmup) == (3, 0.5, 0.0), path.name


def test_test_accuracy_is_selected_on_validation():
    history = [
        {"global_step": 10, "val_ema_top1": 50.0, "test_top1": 40.0, "test_ema_top1": 41.0},
        {"global_step": 20, "val_ema_top1": 70.0, "test_top1": 45.0, "test_ema_top1": 44.0},
        {"global_step": 30, "val_ema_top1": 70.0, "test_top1": 60.0, "test_ema_top1": 61.0},
    ]
    picked = selected_by_validation(history)
    assert picked["iteration"] == 20 and picked["test_ema_top1"] == 44.0
    assert selected_by_validation([{"global_step": 1, "test_top1": 3.0}]) is None


# ----------------------------------------------------------------------------------------------
# USB's pretrained ViT-S/2 through the recipe's loading path


@pytest.fixture(scope="module")
def usb_state() -> dict[str, torch.Tensor]:
    """Random tensors with the names and shapes of USB's vit_small_patch2_32_mlp_im_1k_32.pth (1000-way head)."""
    return random_state_dict(usb_vit_small_patch2_32(num_classes=1000, grid=8), seed=0)


def _config(path: str) -> SSLConfig:
    return build_config(SSLConfig, {"pretrained": path, "model_kwargs": {"drop_path_rate": 0.0}})


def test_usb_checkpoint_loads_through_the_recipe(usb_state, tmp_path):
    path = tmp_path / "vit_small_patch2_32_mlp_im_1k_32.pth"
    torch.save({"model": usb_state}, path)
    logged = []
    model = build_model(_config(str(path)), num_classes=100, log=logged.append)
    state = model.state_dict()
    torch.testing.assert_close(state["blocks.11.mlp.fc2.weight"], usb_state["blocks.11.mlp.fc2.weight"])
    assert state["pos_embed"].shape == (1, 257, 384)  # resampled from the 8x8 grid to 16x16
    assert state["head.weight"].shape == (100, 384)
    assert "dropped" in logged[0] and "pos_embed resampled from 8x8 to 16x16" in logged[0]


def test_wrong_checkpoint_fails_clearly(usb_state, tmp_path):
    renamed = {f"backbone.{k}": v for k, v in usb_state.items()}
    path = tmp_path / "renamed.pth"
    torch.save({"model": renamed}, path)
    with pytest.raises(PretrainedError, match=r"does not fit vit_small_patch2_32.*missing .*blocks\.0\.attn\.qkv"):
        build_model(_config(str(path)), num_classes=100)
    torch.save({"model": usb_state}, path)
    narrow = build_config(SSLConfig, {"pretrained": str(path), "model_kwargs": {"embed_dim": 48, "num_heads": 2}})
    with pytest.raises(
        PretrainedError, match=r"shape mismatch\(es\): cls_token: checkpoint \(1, 1, 384\) vs model \(1, 1, 48\)"
    ):
        build_model(narrow, num_classes=100)
    with pytest.raises(PretrainedError, match="not found.*vit_small_patch2_32_mlp_im_1k_32.pth"):
        build_model(_config(str(tmp_path / "absent.pth")), num_classes=100)
