"""Run a recipe script as a scheduler pre-empts it at a known step (test support, never installed).

Usage: ``python preempt_at_step.py STEP[:SIGNAL] SCRIPT [ARGS ...]`` (also as the script of ``accelerate
launch``). After optimiser step STEP the main process sends SIGNAL (default SIGTERM) to its whole process
group, as SLURM signals every task of a job (SIGINT: as Ctrl-C reaches the terminal's foreground group),
and once more to itself in the middle of the checkpoint save that follows (after the state is written,
before the checkpoint gets its final name). The run itself is unchanged: the recipe's own ``Run`` handles
both signals exactly as it handles a scheduler's or a terminal's.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys

from accelerate import Accelerator

from dkl_train import preemption


def main() -> None:
    step, script, *args = sys.argv[1:]
    at_step, _, name = step.partition(":")
    at_step, signum = int(at_step), getattr(signal, name or "SIGTERM")
    sent = False
    requested = preemption.Preemption.requested
    save_state = Accelerator.save_state

    def signalling_requested(self: preemption.Preemption) -> bool:
        nonlocal sent
        if self.state.global_step == at_step and self.accelerator.is_main_process and not sent:
            sent = True
            os.killpg(os.getpgrp(), signum)
        return requested(self)

    def save_state_then_signal(accelerator: Accelerator, *a, **kw):  # noqa: ANN202 - Accelerate's own return
        out = save_state(accelerator, *a, **kw)
        if sent and accelerator.is_main_process:
            os.kill(os.getpid(), signum)  # a second signal while the checkpoint is being saved
        return out

    preemption.Preemption.requested = signalling_requested
    Accelerator.save_state = save_state_then_signal
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
