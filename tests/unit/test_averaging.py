"""Weight averaging: EMA of parameters and buffers, the released offline average, BN refresh."""

import pytest
import torch
from torch import nn

from dkl_train.averaging import ema_model, exponential_checkpoint_average, recompute_bn_statistics


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def test_ema_follows_the_formula_for_parameters_and_buffers():
    model = small_net()
    ema = ema_model(model, decay=0.9)
    ema.update_parameters(model)  # first call copies
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    model(torch.randn(16, 4))  # moves BN running stats
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update_parameters(model)
    after = model.state_dict()
    averaged = ema.module.state_dict()
    for key in ("0.weight", "1.running_mean", "1.running_var"):
        torch.testing.assert_close(averaged[key], 0.9 * before[key] + 0.1 * after[key])


def test_ema_rejects_bad_decay():
    with pytest.raises(ValueError, match="decay"):
        ema_model(small_net(), decay=1.0)


def test_offline_average_matches_the_recurrence():
    states = []
    for seed in range(3):
        torch.manual_seed(seed)
        states.append({"w": torch.randn(3), "n": torch.tensor(seed)})
    average = exponential_checkpoint_average(states, new_weight=0.1)
    expected = 0.1 * states[2]["w"] + 0.9 * (0.1 * states[1]["w"] + 0.9 * states[0]["w"])
    torch.testing.assert_close(average["w"], expected)
    assert int(average["n"]) == 2
    with pytest.raises(ValueError, match="different parameter names"):
        exponential_checkpoint_average([{"a": torch.ones(1)}, {"b": torch.ones(1)}])


def test_recompute_bn_statistics_uses_the_given_batches():
    model = small_net()
    data = [torch.randn(32, 4) * 3 + 1 for _ in range(4)]
    recompute_bn_statistics(model, data)
    features = model[0](torch.cat(data))
    torch.testing.assert_close(model[1].running_mean, features.mean(0), rtol=1e-4, atol=1e-4)
