"""The learning-rate schedule (linear warm-up, cosine decay) and ``--time-budget``, which fits
the schedule's length to a wall-clock budget."""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from d2a_edge.training.config import OptimConfig
from d2a_edge.training.distributed import Dist


@dataclass
class Schedule:
    """The step count the LR schedule decays over; ``--time-budget`` lowers it after timing."""

    total: int


def lr_factor(step: int, total: int, o: OptimConfig) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_lr_ratio``."""
    if step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    t = (step - o.warmup_steps) / max(1, total - o.warmup_steps)
    return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


CALIBRATION_STEPS = (10, 40)  # steps after the start between which --time-budget first times a step


REFITS = 20  # after that first fit, the total is fitted again this many times, evenly spaced


class Calibration:
    """``--time-budget``: fit the schedule's total step count to the budget, again and again.

    The first fit times steps ``start+10 .. start+40``. After it the total is fitted again every
    1/``REFITS`` of the remaining steps, each time from the steps since the previous fit, so a
    slow (or fast) stretch, e.g. another job on the same cores during the first timing, is
    corrected while the cosine schedule is still far from its end. Every fit only lowers the
    step count given on the command line (or the config's), never raises it. Under DDP the fit
    steps are the same on every rank and the ranks agree on the smallest total.
    """

    def __init__(self, start: int, budget: float, t0: float):
        self.start, self.budget, self.t0 = start, budget, t0
        self.mark: tuple[int, float] | None = None  # (step, time) the next fit times from
        self.next_fit = start + CALIBRATION_STEPS[1]
        self.every: int | None = None  # steps between fits, set by the first fit
        self.cap: int | None = None    # the total before the first fit

    def after_step(self, step: int, total: int, d: Dist) -> tuple[int, bool]:
        """(new total, stop now) after ``step`` finished."""
        now = time.perf_counter()
        if step == self.start + CALIBRATION_STEPS[0]:
            self.mark = (step, now)
        elif step == self.next_fit and self.mark is not None:
            return self._fit(step, now, total, d), False
        return total, (d.world == 1 and now - self.t0 > self.budget)

    def _fit(self, step: int, now: float, total: int, d: Dist) -> int:
        first = self.cap is None
        if first:
            self.cap = total
        per_step = (now - self.mark[1]) / (step - self.mark[0])
        fit = step + int((self.budget - (now - self.t0)) / per_step)
        if d.world > 1:  # every rank must stop at the same step
            t = torch.tensor([fit], device=d.device)
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
            fit = int(t.item())
        new = max(step + 1, min(self.cap, fit))
        if first:
            self.every = max(CALIBRATION_STEPS[1] - CALIBRATION_STEPS[0], (new - step) // REFITS)
        self.mark, self.next_fit = (step, now), step + self.every
        if d.main and (first or new != total):
            print(f"time budget {self.budget:.0f} s, {now - self.t0:.0f} s used: "
                  f"{1 / per_step:.2f} steps/s -> {new} steps", file=sys.stderr)
        return new
