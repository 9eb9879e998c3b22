"""Launched by test_kd.py: run the KD recipe's ``main`` once per method inside one `accelerate launch`.

One launch pays the interpreter, torch and accelerate start-up once instead of five times; each
method still goes through the recipe's own command-line entry point, config, Run and results.

    accelerate launch tests/recipes/_kd_methods.py OUTPUT_ROOT METHOD[,METHOD...] key=value ...
"""

import sys
from pathlib import Path

from dkl_recipe_kd.train import main

if __name__ == "__main__":
    root, methods, overrides = Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3:]
    for method in methods:
        main([*overrides, f"method={method}", f"output_dir={root / method}"])
