"""Generation progress: members done per sampler round, seconds per member, the time left and the cost estimate.

The sampler reports after every round (:func:`sciencegen.sample` ``progress=`` a callable): members done so far,
fractional (a batch's members times its accepted steps over the steps). :class:`Progress` turns that into a
progress bar in members (``generate.progress=true``) or log lines at a sane rate (``false``: batch jobs), and
says once, early in the first batch, what the whole run will cost on this device.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["ESTIMATE_AFTER", "LOG_EVERY", "LONG_RUN", "Progress", "Tracked", "device_label", "duration"]

log = logging.getLogger(__name__)

#: seconds between progress lines without a bar (the first ten minutes; every five minutes after that)
LOG_EVERY = 60.0
#: seconds into the first batch after which its partial progress gives the estimate (else: the batch's end)
ESTIMATE_AFTER = 60.0
#: an estimate above this many seconds comes with advice (a GPU, fewer members)
LONG_RUN = 3600.0

_BAR = "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total_fmt} [{elapsed}<{remaining}, {rate_inv_fmt}{postfix}]"


def duration(seconds: float) -> str:
    """A duration for people: ``42 s``, ``3.5 min``, ``2.1 h``, ``1.5 days``.

    Parameters
    ----------
    seconds
        The duration.
    """
    if not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def device_label(device: torch.device) -> str:
    """Where sampling runs, as the estimate names it: ``cpu (2 threads)``, ``cuda:0 (NVIDIA H100 80GB HBM3)``.

    Parameters
    ----------
    device
        The sampling device.
    """
    device = torch.device(device)
    if device.type == "cpu":
        n = torch.get_num_threads()
        return f"cpu ({n} thread{'' if n == 1 else 's'})"
    if device.type == "cuda":
        try:
            return f"{device} ({torch.cuda.get_device_name(device)})"
        except Exception:  # no driver to ask: the device alone
            return str(device)
    return str(device)


class Progress:
    """The members this run samples, advanced per sampler round: a bar, or log lines; the estimate once.

    Parameters
    ----------
    total
        Members this run samples (every condition's and lead time's members counted once per member).
    members
        ``generate.members`` (the advice names a smaller value).
    device
        The sampling device.
    bar
        A tqdm bar in members (seconds per member, time left); ``False``: a log line every :data:`LOG_EVERY`
        seconds at most (every five minutes after the first ten).
    clock
        Seconds (tests give their own).
    log_every, estimate_after
        As :data:`LOG_EVERY`, :data:`ESTIMATE_AFTER`.
    """

    def __init__(self, total: int, members: int, device: torch.device | str, bar: bool,
                 clock: Callable[[], float] = time.perf_counter, log_every: float | None = None,
                 estimate_after: float | None = None):
        self.total, self.members, self.device = int(total), int(members), device_label(torch.device(device))
        self.clock = clock
        self.log_every = LOG_EVERY if log_every is None else float(log_every)
        self.estimate_after = ESTIMATE_AFTER if estimate_after is None else float(estimate_after)
        self.t0 = self.last_line = clock()
        self.finished = 0.0  # members of the units done
        self.shown = 0.0  # members done, as last reported (units done plus the one in flight)
        self.units = 0
        self.unit_members, self.draws, self.draw = 0, 1, -1
        self.estimate: float | None = None  # seconds for the whole run, once estimated
        self.bar = None
        if bar and self.total:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc="members", unit="member", bar_format=_BAR, dynamic_ncols=True)

    # ------------------------------------------------------------------------------------------ the units

    def begin(self, members: int, draws: int = 1) -> None:
        """A unit of work starts: ``members`` members, sampled by ``draws`` sampler calls (a rollout's lead times)."""
        self.unit_members, self.draws, self.draw = int(members), max(int(draws), 1), -1

    def draw_callback(self, members: int) -> Callable[[float], None]:
        """The ``progress`` callable of the next sampler call of the unit, which draws ``members`` members."""
        self.draw += 1
        k, n = min(self.draw, self.draws - 1), max(int(members), 1)

        def report(done: float) -> None:
            part = self.unit_members * (k + min(float(done), n) / n) / self.draws
            self._advance(self.finished + part)

        return report

    def end(self, rounds: int | None = None, nfe: float | None = None) -> None:
        """The unit in flight is done (its ``rounds`` and mean ``nfe`` shown beside the bar)."""
        self.finished += self.unit_members
        self.units += 1
        if self.bar is not None and rounds is not None:
            self.bar.set_postfix(rounds=rounds, nfe=f"{nfe:.0f}" if nfe is not None else "?", refresh=False)
        self._advance(self.finished)

    def close(self) -> None:
        """Close the bar."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # ------------------------------------------------------------------------------------------ reporting

    def _advance(self, done: float) -> None:
        done = min(max(done, self.shown), float(self.total))
        if self.bar is not None and done > self.shown:
            self.bar.update(done - self.shown)
        self.shown = done
        now = self.clock()
        if self.estimate is None:
            self._maybe_estimate(now)
        if self.bar is None and now - self.last_line >= self._interval(now) and done < self.total:
            self.last_line = now
            log.info("members %.1f/%d (%.0f %%), %s, about %s left", done, self.total, 100 * done / self.total,
                     self._per_member(now), duration(self._left(now)))

    def _interval(self, now: float) -> float:
        return self.log_every if now - self.t0 < 600 else max(self.log_every, 300.0)

    def _per_member(self, now: float) -> str:
        return f"{(now - self.t0) / self.shown:.3g} s/member" if self.shown > 0 else "? s/member"

    def _left(self, now: float) -> float:
        return (now - self.t0) / self.shown * (self.total - self.shown) if self.shown > 0 else math.inf

    def _maybe_estimate(self, now: float) -> None:
        """Once: from the first unit's end, or from its partial progress after ``estimate_after`` seconds."""
        if self.shown <= 0:
            return
        first_done = self.units > 0
        if first_done and self.shown >= self.total:  # all done within the first unit: nothing left to foresee
            self.estimate = 0.0
            return
        early = now - self.t0 >= self.estimate_after and self.shown >= 0.1 * max(self.unit_members, 1)
        if not (first_done or early):
            return
        per = (now - self.t0) / self.shown
        self.estimate = per * self.total
        log.info("%s", self.estimate_line(per, first_done))

    def estimate_line(self, per_member: float, whole_unit: bool = True) -> str:
        """The estimate of the whole run from ``per_member`` seconds per member, with advice when it is long."""
        what = "the first batch" if whole_unit else f"the first {self.shown:.1f} members"
        total = per_member * self.total
        line = (f"estimate: about {duration(total)} for {self.total} members on {self.device} "
                f"({per_member:.3g} s/member from {what})")
        if total <= LONG_RUN:
            return line
        fit = max(1, int(self.members * LONG_RUN / total))
        if self.device.startswith("cpu"):
            return f"{line}; a GPU or fewer members (generate.members={fit}: about 1 h) would help"
        return (f"{line}; fewer members (generate.members={fit}: about 1 h) or shards on more devices "
                "(generate.shard=i/n) would help")


class Tracked:
    """A sampler whose every call reports its rounds to a :class:`Progress` (``progress=`` its callback).

    Parameters
    ----------
    sampler
        The sampler (``sampler(denoiser, shape, members, **kwargs)``, e.g. :class:`sciencegen.samplers.Sampler`);
        its other attributes (``name``, ``steps``, ``options``, ``resolved``) are read through.
    progress
        Where the rounds go.
    """

    def __init__(self, sampler: Any, progress: Progress):
        self.sampler, self.progress = sampler, progress

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["sampler"], name)

    def __call__(self, denoiser: Any, shape: Any, members: int = 1, *args: Any, **kwargs: Any) -> Any:
        """Draw with the sampler, ``progress`` replaced by the unit's callback (the samples are unchanged)."""
        kwargs["progress"] = self.progress.draw_callback(members)
        return self.sampler(denoiser, shape, members, *args, **kwargs)
