"""The schedules of a training run, small objects; those with state carry their own ``state_dict()``.

- :class:`Clock` — honest time: ``train_seconds`` is wall time of the training phase (data
  loading, the step, the refinement all included; CUDA synchronised when read), evaluation is
  timed apart as ``eval_seconds``;
- :class:`LossBand` — the loss band limit in Fourier shells (frequency marching, then the
  distillation band once refined poses exist; stateless: a function of the images seen);
- :class:`Refinement trigger <RefinementTrigger>` — when the semi-amortized refinement runs;
- :class:`Periodic` — every N seconds of training time (evaluation, checkpoints);
- :class:`StopRule` — the step / time budget.

All are pure functions of the counters they are given plus the state they return, so a resumed
run makes exactly the decisions an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["Clock", "LossBand", "RefinementTrigger", "Periodic", "StopRule", "Interrupt"]


class Clock:
    """Training and evaluation wall time (s), continued across a resume.

    ``train_seconds`` = time since :meth:`start` minus the time spent inside :meth:`excluded`
    blocks, plus what the checkpoint had. On CUDA the device is synchronised before each read,
    so queued kernels are not missed (a read without it could stop before backward finishes).
    """

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.train_seconds = 0.0
        self.eval_seconds = 0.0
        self._t0: float | None = None
        self._base = 0.0
        self._excluded = 0.0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def start(self) -> None:
        self._t0, self._base, self._excluded = self._now(), self.train_seconds, 0.0

    def tick(self) -> float:
        """Update and return ``train_seconds``."""
        if self._t0 is not None:
            self.train_seconds = self._base + (self._now() - self._t0) - self._excluded
        return self.train_seconds

    @contextlib.contextmanager
    def excluded(self) -> Iterator[None]:
        """Time inside is evaluation: counted in ``eval_seconds``, not in ``train_seconds``."""
        self.tick()
        t = self._now()
        try:
            yield
        finally:
            dt = self._now() - t
            self.eval_seconds += dt
            self._excluded += dt

    def state_dict(self) -> dict:
        return {"train_seconds": self.tick(), "eval_seconds": self.eval_seconds}

    def load_state_dict(self, s: dict) -> None:
        self.train_seconds, self.eval_seconds = float(s["train_seconds"]), float(s.get("eval_seconds", 0.0))
        if self._t0 is not None:
            self.start()


class LossBand:
    """Loss band limit (shells; None = the full disc |k| < L/2).

    Before refinement: frequency marching from ``start`` shells to Nyquist, linear in the images
    seen over ``images``; ``start`` None = full band. After refinement: ``distill_band`` shells if
    given (the refined map holds the high shells already), else the marching goes on.
    """

    def __init__(self, box: int, start: float | None, images: int, distill_band: float | None = None):
        self.box, self.start, self.images, self.distill_band = box, start, images, distill_band

    def radius(self, images_seen: int, refined: bool = False) -> float | None:
        half = self.box / 2
        if self.distill_band is not None and refined:
            return None if self.distill_band >= half else float(self.distill_band)
        if self.start is None:
            return None
        r = self.start + (half - self.start) * min(1.0, images_seen / max(1, self.images))
        return None if r >= half else r



class RefinementTrigger:
    """When the semi-amortized refinement runs: first after ``after_images`` training images
    (None: never), then again every ``every`` images (None: once), at most ``rounds`` times, and
    no more once a round has *settled* (its search stopped moving the poses; no ground truth) —
    from round ``min_rounds`` on."""

    def __init__(self, after_images: int | None, every: int | None = None, rounds: int | None = None,
                 min_rounds: int = 1):
        self.after_images, self.every, self.rounds, self.min_rounds = after_images, every, rounds, min_rounds
        self.count = 0  # refinements run so far

    @property
    def done(self) -> bool:
        """No refinement is due any more."""
        if self.after_images is None:
            return True
        if self.every is None:
            return self.count >= 1
        return self.rounds is not None and self.count >= self.rounds

    def next_at(self) -> int | None:
        """Images seen at which the next refinement is due (None: none is)."""
        if self.done or self.after_images is None:
            return None
        return self.after_images + self.count * (self.every or 0)

    def due(self, images_seen: int, settled: bool = False) -> bool:
        """``settled``: the last round's search had stopped moving the poses (then no more rounds)."""
        n = self.next_at()
        return n is not None and images_seen >= n and not (settled and self.count >= max(1, self.min_rounds))

    def fired(self) -> None:
        self.count += 1

    def state_dict(self) -> dict:
        return {"count": self.count}

    def load_state_dict(self, s: dict) -> None:
        self.count = int(s["count"]) if "count" in s else int(bool(s.get("done")))


class Periodic:
    """Fires every ``every`` seconds of training time."""

    def __init__(self, every: float):
        self.every = every
        self.last = 0.0

    def due(self, t: float) -> bool:
        return t - self.last >= self.every

    def reset(self, t: float) -> None:
        self.last = t

    def state_dict(self) -> dict:
        return {"last": self.last}

    def load_state_dict(self, s: dict) -> None:
        self.last = float(s["last"])


class Interrupt:
    """Ctrl-C (SIGINT), SIGTERM (what Slurm and other schedulers send at the time limit) and
    SIGUSR1 (Slurm's warning signal, ``--signal=USR1@120``) as a flag the loop checks between
    steps, so the run can save a consistent checkpoint and say how to resume; a second signal of
    the same kind stops at once (the old handler is back)."""

    SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR1")

    def __init__(self) -> None:
        self.requested = False
        self.signum = 0  # the signal that asked (0: none)
        self._old: dict[int, Any] = {}

    def install(self) -> Interrupt:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():  # signals go to the main thread only
            return self

        def handler(signum: int, frame: Any) -> None:
            self.requested, self.signum = True, signum
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))

        for name in self.SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                self._old[sig] = signal.getsignal(sig)
                signal.signal(sig, handler)
        return self

    def restore(self) -> None:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def match_excess(match_mse: float | str | None, match_scatter: float | str | None) -> float | None:
    """The encoder's own error, estimated without ground truth: ``match_mse`` less the search's.

    The encoder's and the search's errors add (independent and small), and two searches with
    independent random grids differ by twice the search's error, so the search's is
    ``match_scatter / 2``; it is credited up to half of ``match_mse`` only, so a search that cannot
    read the map (a large scatter) never passes for agreement. Without a scatter (rows of older
    runs): ``match_mse``. Pose-MSE units."""
    if match_mse is None or match_mse == "":
        return None
    m = float(match_mse)
    s = 0.0 if match_scatter is None or match_scatter == "" else float(match_scatter)
    return m - min(s / 2, m / 2)


class StopRule:
    """Stop at ``steps`` steps and/or ``time_budget`` seconds of training time, or — with
    ``match_mse`` — at the first evaluation after the refinement has settled whose held-out
    :func:`match_excess` (the encoder against a search in the current map, less the search's own
    scatter at the data's noise; no ground truth) is below it."""

    def __init__(self, steps: int | None, time_budget: float | None, match_mse: float | None = None):
        self.steps, self.time_budget, self.match_mse = steps, time_budget, match_mse
        self.finished: dict | None = None  # why and when the match rule ended the run

    def observe(self, row: dict, settled: bool) -> None:
        """Look at an evaluation's row (after a settled refinement only)."""
        e = match_excess(row.get("match_mse"), row.get("match_scatter"))
        if self.match_mse is not None and settled and e is not None and e < self.match_mse and self.finished is None:
            self.finished = {"rule": f"match_mse − match_scatter / 2 < {self.match_mse} after a settled refinement",
                             "step": row.get("step"), "train_seconds": row.get("train_seconds"),
                             "match_mse": row["match_mse"], "match_scatter": row.get("match_scatter"),
                             "match_excess": e}

    def done(self, step: int, train_seconds: float) -> bool:
        return self.finished is not None or (self.steps is not None and step >= self.steps) or \
               (self.time_budget is not None and train_seconds >= self.time_budget)

    def state_dict(self) -> dict:
        return {"finished": self.finished}

    def load_state_dict(self, s: dict) -> None:
        self.finished = s.get("finished")
