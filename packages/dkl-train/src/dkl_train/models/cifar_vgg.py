"""VGG with batch norm for 32x32 inputs: vgg8, vgg11, vgg13, vgg16, vgg19 (mdistiller's ``*_bn``).

Five conv groups ``block0..block4`` (conv3x3 with bias, BN, ReLU; the group's last ReLU is applied
in ``forward`` instead, which is why each ``nn.Sequential`` ends on a BN), max-pools between the
first four groups, a global average pool and ``classifier = Linear(512, classes)``. Names and
indices (``block1.0.weight``, ``block1.1.running_mean`` ...) match
``mdistiller/models/cifar/vgg.py`` so the ``vgg13_vanilla`` teacher loads strictly.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from ._layers import classifier_input, init_conv_bn_
from .features import Features
from .registry import register_model

_CONFIGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def _conv_group(widths: list[int], in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [
            nn.Conv2d(in_channels, width, kernel_size=3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        in_channels = width
    return nn.Sequential(*layers[:-1])


class CifarVGG(nn.Module):
    """VGG-BN on five conv groups given by ``config`` (list of per-group widths)."""

    def __init__(self, config: list[list[int]], num_classes: int) -> None:
        super().__init__()
        in_channels = [3] + [group[-1] for group in config[:-1]]
        self.block0 = _conv_group(config[0], in_channels[0])
        self.block1 = _conv_group(config[1], in_channels[1])
        self.block2 = _conv_group(config[2], in_channels[2])
        self.block3 = _conv_group(config[3], in_channels[3])
        self.block4 = _conv_group(config[4], in_channels[4])
        self.classifier = nn.Linear(config[4][-1], num_classes)
        init_conv_bn_(self, linear_std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        side = x.shape[2]
        x = F.max_pool2d(F.relu(self.block0(x)), 2)
        x = F.max_pool2d(F.relu(self.block1(x)), 2)
        x = F.max_pool2d(F.relu(self.block2(x)), 2)
        x = F.relu(self.block3(x))
        # mdistiller pools after block3 only for 64x64 inputs (Tiny-ImageNet); at 32x32 block4 runs at 4x4.
        if side == 64:
            x = F.max_pool2d(x, 2)
        x = F.relu(self.block4(x))
        return self.classifier(classifier_input(x))

    def forward_stages(self, x: Tensor) -> tuple[Tensor, Features]:
        """Logits and mdistiller's features: each group's output before/after its final ReLU (group 0
        after it in both lists, as mdistiller has it), taken before the max-pool that follows."""
        side = x.shape[2]
        f0 = F.relu(self.block0(x))
        feats, preacts = [f0], [f0]
        x = f0
        for i, group in enumerate((self.block1, self.block2, self.block3, self.block4), start=1):
            if i < 4 or side == 64:  # as in forward: no pool before block4 at 32x32
                x = F.max_pool2d(x, 2)
            preact = group(x)
            x = F.relu(preact)
            preacts.append(preact)
            feats.append(x)
        pooled = classifier_input(x)
        return self.classifier(pooled), Features(feats, preacts, pooled)


def _register(name: str) -> None:
    @register_model(name)
    def factory(num_classes: int) -> CifarVGG:
        return CifarVGG(_CONFIGS[name], num_classes)


for _name in _CONFIGS:
    _register(_name)
