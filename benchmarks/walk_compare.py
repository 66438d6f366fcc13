"""Wall time of ``sciencegen.sample`` for a few samplers on the exact GRF 64², one JSON line.

Compares two versions of the code side by side: run it alternately under ``PYTHONPATH=CHECKOUT`` for each
(``git worktree add /tmp/old COMMIT``), e.g.::

    for i in 1 2 3; do for P in /tmp/old $PWD; do
        OMP_NUM_THREADS=1 PYTHONPATH=$P python benchmarks/walk_compare.py; done; done

Each line holds the seconds, rounds, NFE and the sum of the samples (equal sums: the same trajectories).
"""
import json, sys, time
import torch
torch.set_num_threads(1)
import sciencegen
from sciencegen.targets import GaussianRandomField
out = {"file": sciencegen.__file__}
for name, size, steps in [("picard_sde", 64, 1000), ("picard_dpm2m", 64, 64), ("picard_heun", 64, 64),
                          ("sequential_sde", 64, 1000)]:
    g = GaussianRandomField(size)
    t = time.perf_counter()
    r = sciencegen.sample(g.denoiser, g.shape, members=8, sampler=name, steps=steps, seed=0, dtype=torch.float64)
    out[name] = {"s": time.perf_counter() - t, "rounds": r.stats["rounds"], "nfe": r.stats["nfe"],
                 "sum": float(r.samples.double().sum())}
print(json.dumps(out))
