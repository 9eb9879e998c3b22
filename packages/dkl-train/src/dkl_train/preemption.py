"""Pre-emption: stop signals become a flag, and every process agrees on the optimiser step to stop after.

SLURM and most schedulers send SIGTERM (or SIGUSR1, with ``--signal``) before a time limit or on
pre-emption; Ctrl-C sends SIGINT, which stops the run the same way (exit status
:data:`INTERRUPTED_EXIT_CODE`). A second Ctrl-C says that the run exits once its checkpoint is saved and
that a third aborts it (the default SIGINT action then ends the process at once; the checkpoint being
written never gets its final name, so the previous one stays the newest). The handler only notes the
signal (it may run anywhere, even inside a checkpoint save, which must finish). After each optimiser step the training loop asks :meth:`StopSignals.agreed`;
processes may see a signal at different steps, so each posts its flag in an asynchronous all-reduce
(MAX) over a small CPU (gloo) group and reads the previous step's result: every process gets the same
answer one step after the first one saw a signal, and no step waits on the accelerator. The run then
saves a mid-period checkpoint and exits with :data:`PREEMPTED_EXIT_CODE` (see
:meth:`dkl_train.training.Run.preempt`).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import torch

from .errors import INTERRUPTED_EXIT_CODE

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: what a shell reports for a job ended by SIGTERM
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopSignals:
    """The stop-signal flag of one process and the agreement between processes.

    Args:
        num_processes: processes of the run (a single process answers at once, without collectives).
    """

    def __init__(self, num_processes: int) -> None:
        self.num_processes = num_processes
        self.first: int | None = None  # the first stop signal received
        self.extra = 0  # signals received after it (noted, ignored)
        self._pending: tuple[Any, torch.Tensor] | None = None  # the previous step's all-reduce and its flag
        self._group: Any = None  # the gloo group the flags travel on
        self._saved_handlers: dict[int, Any] | None = None

    @property
    def received(self) -> bool:
        """Whether this process has received a stop signal."""
        return self.first is not None

    def install(self) -> None:
        """Replace the handlers of :data:`STOP_SIGNALS` with :meth:`on_signal` (main thread only; once)."""
        if threading.current_thread() is not threading.main_thread() or self._saved_handlers:
            return  # Python delivers signals to the main thread only
        self._saved_handlers = {s: signal.signal(s, self.on_signal) for s in STOP_SIGNALS}

    def restore(self) -> None:
        """Put the previous handlers back."""
        for signum, handler in (self._saved_handlers or {}).items():
            signal.signal(signum, handler)
        self._saved_handlers = None

    def on_signal(self, signum: int, frame: Any) -> None:
        # Only flags: the handler may run anywhere, including inside a checkpoint save, which must finish.
        if self.first is None:
            self.first = signum
            return
        self.extra += 1
        if signum == signal.SIGINT and self.first == signal.SIGINT:
            # A second Ctrl-C: someone is waiting at the terminal. Leave the next one to the default action
            # (an abort), and say so; os.write, as print may not re-enter a stream the handler interrupted.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            if int(os.environ.get("RANK", "0")) == 0:
                os.write(
                    2,
                    b"Ctrl-C again: the run exits once its checkpoint is saved; a third Ctrl-C aborts it "
                    b"without that checkpoint (resume=true then continues from the previous one)\n",
                )

    def agreed(self, *, wait: bool) -> bool:
        """Have all processes agreed to stop? ``wait``: decide now (once per period) rather than one step later."""
        local = self.first is not None
        if self.num_processes == 1:
            return local
        import torch.distributed as dist

        if self._pending is not None:
            work, flag = self._pending
            self._pending = None
            work.wait()
            if flag.item():
                return True
        if self._group is None:  # CPU flags over gloo: no device sync, even when training uses NCCL
            self._group = dist.new_group(backend="gloo")
        flag = torch.tensor([int(local)], dtype=torch.int32)
        work = dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        if wait:
            work.wait()
            return bool(flag.item())
        self._pending = (work, flag)
        return False

    def complete_pending(self) -> None:
        """Finish the all-reduce every process has posted, before any teardown (end of the run's periods)."""
        if self._pending is not None:
            self._pending[0].wait()
            self._pending = None

    @property
    def exit_code(self) -> int:
        """:data:`INTERRUPTED_EXIT_CODE` after Ctrl-C (SIGINT), else :data:`PREEMPTED_EXIT_CODE`."""
        return INTERRUPTED_EXIT_CODE if self.first == signal.SIGINT else PREEMPTED_EXIT_CODE

    @property
    def first_name(self) -> str:
        """The first stop signal's name, for the run's last message (the stop may come from another process)."""
        return signal.Signals(self.first).name if self.first is not None else "another process's stop signal"


class Preemption:
    """A run's pre-emption: its :class:`StopSignals`, the mid-period checkpoint and exit, the position handed back.

    Args:
        signals: the run's stop signals.
        accelerator: the run's (ends the trackers before the exit).
        state: the run's counters (``global_step``; ``partial``: the position saved inside a period).
        save: writes a checkpoint of the run as it is now (mid-period while ``state.partial`` is set).
        say: prints once (main process).
        period_name: what a period is called ("epoch", "period") in messages.
    """

    def __init__(
        self,
        signals: StopSignals,
        accelerator: Any,
        state: Any,
        save: Callable[[], Path],
        say: Callable[[str], None],
        period_name: str = "epoch",
    ) -> None:
        self.signals, self.accelerator, self.state = signals, accelerator, state
        self.save, self.say, self.period_name = save, say, period_name

    @contextmanager
    def watching(self) -> Iterator[None]:
        """While inside, SIGTERM/SIGUSR1 only ask the run to stop after its current optimiser step."""
        self.signals.install()
        try:
            yield
        finally:
            self.signals.complete_pending()  # every process posted it: complete it before any teardown
            self.signals.restore()

    def requested(self) -> bool:
        """Whether every process should stop now; call it on every process after every optimiser step.

        The same answer on every process, one step after the first one saw a signal, without a
        host-device synchronisation (:meth:`StopSignals.agreed`).
        """
        return self.signals.agreed(wait=False)

    def agreed_at_end(self) -> bool:
        """At a period's end: whether a signal arrived during its last step (decided now, every process)."""
        return self.signals.agreed(wait=True)

    def preempt(self, period: int, progress: dict[str, Any]) -> NoReturn:
        """Save a mid-period checkpoint holding ``progress`` (this process's position), then exit with 143 (130 after
        Ctrl-C)."""
        self.state.partial = {"epoch": period, **progress}
        path = self.save()
        self.state.partial = None
        signals = self.signals
        ignored = f"; {signals.extra} more signal(s) after the first were ignored" if signals.extra else ""
        self.say(
            f"{signals.first_name}: stopped after optimiser step {self.state.global_step} (inside {self.period_name} "
            f"{period + 1}); checkpoint {path}{ignored}. Exiting with status {signals.exit_code}; continue with "
            "resume=true."
        )
        self.accelerator.end_training()
        signals.restore()  # (signals until here are still only counted)
        raise SystemExit(signals.exit_code)  # 143, or 130 after Ctrl-C

    def resumed_progress(self, period: int, device: torch.device) -> dict[str, Any] | None:
        """The progress :meth:`preempt` saved inside ``period``, once (tensors on ``device``); else ``None``."""
        from .data import to_device

        partial = self.state.partial
        if partial is None or partial.get("epoch") != period:
            return None
        self.state.partial = None
        return {k: to_device(v, device) for k, v in partial.items() if k != "epoch"}
