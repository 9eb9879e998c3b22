"""Launched by test_kd.py: run the KD recipe's ``main`` once per method inside one `accelerate launch`.

One launch pays the interpreter, torch and accelerate start-up once instead of five times; each
method still goes through the recipe's own command-line entry point, config, Run and results. The
config file and the overrides are shared: each method gets the settings it reads (a method refuses
the others) in a config file of its own (:func:`tests.recipes.conftest.config_for_method`).

    accelerate launch tests/recipes/_kd_methods.py OUTPUT_ROOT METHOD[,METHOD...] --config FILE key=value ...
"""

import sys

from dkl_recipe_kd.train import KDConfig, main

from tests.recipes.conftest import config_for_method, launched_runs


def run_name(method: str) -> str:
    """The run folder's name: the method's, or the class name of one given as ``file.py:Class``."""
    return method.rpartition(":")[2]


if __name__ == "__main__":
    root, methods, arguments = launched_runs(sys.argv)
    config_file = arguments[arguments.index("--config") + 1]
    overrides = [a for a in arguments if "=" in a and not a.startswith("--")]
    for method in methods:
        name = run_name(method)
        config = config_for_method(KDConfig, config_file, overrides, method, root / f"{name}.yaml")
        main(["--config", str(config), f"output_dir={root / name}"])
