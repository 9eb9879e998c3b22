"""Launched by test_kd.py: run the KD recipe's ``main`` once per method inside one `accelerate launch`.

One launch pays the interpreter, torch and accelerate start-up once instead of five times; each
method still goes through the recipe's own command-line entry point, config, Run and results. The
config file and the overrides are shared: each method gets the settings it reads (a method refuses
the others), written to a config file of its own.

    accelerate launch tests/recipes/_kd_methods.py OUTPUT_ROOT METHOD[,METHOD...] --config FILE key=value ...
"""

import dataclasses
import sys

import yaml
from dkl_recipe_kd.train import KDConfig, main

from dkl_train.config import parse_overrides, resolve_schema
from tests.recipes.conftest import launched_runs


def method_arguments(root, method: str, arguments: list[str]) -> list[str]:
    """``--config FILE key=value ...`` cut down to what ``method`` reads (a config file of its own under root)."""
    valid = {f.name for f in dataclasses.fields(resolve_schema(KDConfig, {"method": method}))}
    config_file = arguments[arguments.index("--config") + 1]
    overrides = [a for a in arguments if "=" in a and not a.startswith("--")]
    values = {k: v for k, v in yaml.safe_load(open(config_file)).items() if k in valid}
    values.update((k, v) for k, v in parse_overrides(overrides) if k in valid)
    name = run_name(method)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**values, "method": method, "output_dir": str(root / name)}))
    return ["--config", str(path)]


def run_name(method: str) -> str:
    """The run folder's name: the method's, or the class name of one given as ``file.py:Class``."""
    return method.rpartition(":")[2]


if __name__ == "__main__":
    root, methods, arguments = launched_runs(sys.argv)
    for method in methods:
        main(method_arguments(root, method, arguments))
