"""Wall time of ``sciencegen.sample`` for a few samplers on the exact GRF 64², one JSON line.

Compares two versions of the code side by side: run it alternately under ``PYTHONPATH=CHECKOUT`` for each
(``git worktree add /tmp/old COMMIT``), e.g.::

    for i in 1 2 3; do for P in /tmp/old $PWD; do
        OMP_NUM_THREADS=1 PYTHONPATH=$P python benchmarks/walk_compare.py; done; done

Each line holds the seconds, rounds, NFE and the sum of the samples (equal sums: the same trajectories).
"""

from __future__ import annotations

import json
import logging
import sys
import time

import torch

import sciencegen
from sciencegen.targets import GaussianRandomField

CASES = [("picard_sde", 1000), ("picard_dpm2m", 64), ("picard_heun", 64), ("sequential_sde", 1000)]


def main() -> int:
    torch.set_num_threads(1)
    out: dict = {"file": sciencegen.__file__}
    g = GaussianRandomField(64)
    for name, steps in CASES:
        t = time.perf_counter()
        r = sciencegen.sample(g.denoiser, g.shape, members=8, sampler=name, steps=steps, seed=0,
                              dtype=torch.float64)
        out[name] = {"s": time.perf_counter() - t, "rounds": r.stats["rounds"], "nfe": r.stats["nfe"],
                     "sum": float(r.samples.double().sum())}
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    raise SystemExit(main())
