"""Launched by test_kd.py: run the KD recipe's ``main`` once per method inside one `accelerate launch`.

One launch pays the interpreter, torch and accelerate start-up once instead of five times; each
method still goes through the recipe's own command-line entry point, config, Run and results.

    accelerate launch tests/recipes/_kd_methods.py OUTPUT_ROOT METHOD[,METHOD...] key=value ...
"""

import sys

from dkl_recipe_kd.train import main

from tests.recipes.conftest import launched_runs

if __name__ == "__main__":
    root, methods, overrides = launched_runs(sys.argv)
    for method in methods:
        main([*overrides, f"method={method}", f"output_dir={root / method}"])
