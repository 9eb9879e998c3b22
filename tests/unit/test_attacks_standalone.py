"""dkl_core.attacks imports and attacks with torch alone; AutoAttack asks for the optional extra only when used."""

import subprocess
import sys

SCRIPT = """
import importlib.abc, sys
BLOCKED = ["pyautoattack", "accelerate", "datasets", "timm", "torchvision", "sklearn", "yaml", "tqdm"]
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked")
sys.meta_path.insert(0, Block())
import torch
import dkl_core.attacks as attacks
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
x, y = torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
attacks.pgd(model, x, y, eps=0.1, step_size=0.05, steps=2)
attacks.inner_maximization(model, x, y, epoch=5, epochs=10)
attacks.robust_accuracy(model, x, y, eps=0.1, steps=2)
try:
    attacks.autoattack_evaluation(model, x, y, eps=0.1)
except ImportError as error:
    assert "dkl-core[autoattack]" in str(error), error
else:
    raise AssertionError("expected an ImportError naming the extra")
assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED]
print("attacks standalone ok")
"""


def test_attacks_need_only_torch():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "attacks standalone ok" in result.stdout
