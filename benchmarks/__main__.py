"""Run every ``benchmarks/bench_*.py`` (each has ``main(argv)``), or only those named on the command line.

Usage: ``python -m benchmarks [--device cuda] [--only losses,attacks] [--results-dir DIR | --update-committed]``.
Results go to ``runs/benchmarks/`` unless ``--results-dir`` says otherwise; ``--update-committed`` replaces the
committed figures in ``benchmarks/results/`` (what the READMEs cite). Every file written is printed.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil

import benchmarks
from benchmarks._common import add_output_options, output_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default="", help="comma-separated benchmark names (bench_<name>.py)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    add_output_options(parser)
    args, rest = parser.parse_known_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    names = sorted(
        m.name[len("bench_") :] for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_")
    )
    chosen = [n for n in names if not args.only or n in args.only.split(",")]
    if args.only and len(chosen) != len(args.only.split(",")):
        raise SystemExit(f"unknown benchmark in --only={args.only}; available: {', '.join(names)}")
    # Each benchmark gets the output options back, so output_dir(argv) there agrees with write_results' default.
    rest += ["--update-committed"] if args.update_committed else []
    rest += ["--results-dir", str(args.results_dir)] if args.results_dir is not None else []
    print(f"results go to {output_dir(rest)}", flush=True)
    for name in chosen:
        print(f"== bench_{name} ==", flush=True)
        importlib.import_module(f"benchmarks.bench_{name}").main(rest)


if __name__ == "__main__":
    main()
