"""The command line of ``sciencegen-bench``: its options, and the sampler specs and number lists they hold.

:func:`bench_parser` builds the parser; :func:`split_specs` cuts ``--samplers`` into specs and
:func:`number_list` reads ``--tols`` / ``--targets``.  ``sciencegen.cli.bench`` runs the benchmark.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

__all__ = ["bench_parser", "number_list", "split_specs"]

DESCRIPTION = (
    "Run sequential, ParaDiGMS and Picard samplers side by side on the exact Gaussian random field target (or a "
    "trained checkpoint with --model) and print rounds, NFE, wall time, spectral error and distance to sequential. "
    "With --sweep: each sampler over a ladder of tolerances, read at equal distances to the sequential trajectory."
)


def bench_parser(default_samplers: Sequence[str]) -> argparse.ArgumentParser:
    """The ``sciencegen-bench`` argument parser; ``default_samplers`` is the default of ``--samplers``."""
    p = argparse.ArgumentParser(prog="sciencegen-bench", description=DESCRIPTION)
    p.add_argument("--size", type=int, default=None,
                   help="grid points per side of the GRF (d = size^2); default 64 (with --model: the checkpoint's)")
    p.add_argument("--steps", type=int, default=1000, help="grid steps; default 1000")
    p.add_argument("--members", type=int, default=8, help="ensemble members; default 8")
    p.add_argument("--samplers", default=",".join(default_samplers),
                   help="space-separated or comma-separated names; options as name:key=value,key=value "
                   "(separate such specs with spaces); with --sweep, tols=1/0.1/0.01 gives one spec its own ladder "
                   "and tol=X fixes one point")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3,
                   help="timed repetitions (median wall time); default 3 (--sweep times each run once)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    p.add_argument("--device", default="cpu", help="where to sample (cpu, cuda, cuda:1, ...); default cpu")
    p.add_argument("--model", default=None, metavar="CHECKPOINT",
                   help="sample a trained model (a step_*.pt file or a training run directory) instead of the exact "
                   "GRF; its spectral error is given only when it was trained on GRF samples of its grid")
    p.add_argument("--scaling", default=None,
                   help="comma-separated sizes: report rounds against d instead (e.g. 32,64,128,256,512)")
    p.add_argument("--sweep", action="store_true",
                   help="run each parallel sampler over a ladder of tolerances and report the rounds and NFE at "
                   "equal distances to the sequential trajectory (--targets)")
    p.add_argument("--tols", default=None,
                   help="with --sweep: comma-separated tolerances for every parallel sampler (default: 8 from 10x "
                   "its default tol down by sqrt(10) a rung)")
    p.add_argument("--targets", default="3e-3,3e-4",
                   help="with --sweep: comma-separated distances to the sequential trajectory to compare at; the "
                   "default ladder stops at the first tol within a tenth of the smallest; default 3e-3,3e-4")
    p.add_argument("--threads", type=int, default=int(os.environ.get("SCIENCEGEN_THREADS", "0")) or None,
                   help="torch CPU threads")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--figure", default=None,
                   help="write the figure to this PNG: rounds vs NFE; with --sweep rounds and NFE vs distance")
    return p


def split_specs(text: str) -> list[str]:
    """``"a,b:tol=1,window=2 c"`` -> ``["a", "b:tol=1,window=2", "c"]``: a comma and a known name start a spec."""
    from ..samplers import SAMPLERS

    out: list[str] = []
    for chunk in text.split():
        cur = ""
        for part in chunk.split(","):
            if part.partition(":")[0] in SAMPLERS or not cur:
                if cur:
                    out.append(cur)
                cur = part
            else:
                cur += "," + part
        if cur:
            out.append(cur)
    return out


def number_list(text: str, option: str) -> list[float]:
    """``"1,0.3,1e-2"`` -> ``[1.0, 0.3, 0.01]``, positive finite numbers.

    Raises
    ------
    ValueError
        One line naming ``option`` and the bad item.
    """
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        try:
            value = float(item)
        except ValueError:
            raise ValueError(f"{option}: {item!r} is not a number; give comma-separated numbers") from None
        if not 0 < value < float("inf"):
            raise ValueError(f"{option}: {item!r} must be a positive number")
        out.append(value)
    if not out:
        raise ValueError(f"{option}: give at least one number")
    return out
