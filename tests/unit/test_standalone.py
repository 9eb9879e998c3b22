"""dkl-core is usable with torch alone: nothing else is imported, and its metadata requires nothing else."""

import subprocess
import sys
from importlib.metadata import requires

from packaging.requirements import Requirement

BLOCKED = [
    "accelerate",
    "datasets",
    "timm",
    "torchvision",
    "tensorboard",
    "yaml",
    "tqdm",
    "sklearn",
    "autoattack",
    "pyautoattack",
]

SCRIPT = f"""
import importlib.abc, sys
BLOCKED = {BLOCKED!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked: dkl-core must not need it")
sys.meta_path.insert(0, Block())
import torch, dkl_core
import dkl_core.losses, dkl_core.prior, dkl_core.attacks
s, t = torch.randn(4, 10, requires_grad=True), torch.randn(4, 10)
prior = dkl_core.ClassPrior(10)
prior.update(t, torch.arange(4))
prior.end_epoch()
for loss in (dkl_core.kl_loss, dkl_core.dkl_loss, dkl_core.ikl_loss, dkl_core.gkl_loss):
    loss(s, t).backward()
dkl_core.ikl_loss(s, t, weights=prior.weights(torch.arange(4))).backward()
dkl_core.dkd_loss(s, t, torch.arange(4)).backward()
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not leaked, leaked
print("standalone ok")
"""


def test_imports_and_computes_with_only_torch():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "standalone ok" in result.stdout


def test_metadata_declares_torch_as_the_only_hard_dependency():
    hard = [Requirement(r) for r in requires("dkl-core") if "extra ==" not in r]
    assert [r.name for r in hard] == ["torch"]
