"""The mean shear of Kolmogorov-flow samples: the x-mean of ``u`` against ``y``, generated vs held-out.

Reads the samples that ``benchmarks/kolmogorov_quickstart.py`` cached in its run directories (one curve per
run) and the held-out split of the first run's store, and draws the profiles::

    python benchmarks/kolmogorov_shear.py --runs /tmp/kns/run /tmp/kh4/run \\
        --labels "no position channels" "position channels (harmonics 4)" --figure docs/figures/kolmogorov_shear.png

A translation-equivariant network cannot know where ``y = 0`` is: it puts the forced shear ``sin(4y)`` at a random
phase, and the mean over samples averages it away. Given position channels, it can put it where the data have it.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kolmogorov_quickstart import read_split, shear_profile  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", nargs="+", required=True, help="run directories of kolmogorov_quickstart.py")
    p.add_argument("--labels", nargs="+", required=True, help="one label per run")
    p.add_argument("--figure", required=True)
    a = p.parse_args()
    from matplotlib.figure import Figure

    from sciencegen.models.build import load_model

    _, meta = load_model(a.runs[0])
    ref, _ = read_split(meta["data"]["store"], "validation", float(meta["train"]["holdout"]))
    n = ref.shape[-1]
    y = np.arange(n) * 2 * math.pi / n
    prof_ref = shear_profile(ref)
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    ax.plot(y, prof_ref, "k-", lw=2.5, label=f"held-out ({ref.shape[0]} snapshots)")
    for i, (run, label) in enumerate(zip(a.runs, a.labels, strict=True)):
        cached = sorted(Path(run).glob("quickstart_samples_*.pt"))[-1]
        x = torch.load(cached, weights_only=False)["samples"]
        prof = shear_profile(x)
        err = float(np.linalg.norm(prof - prof_ref) / np.linalg.norm(prof_ref))
        ax.plot(y, prof, color=f"C{i}", lw=1.8, label=f"{label}: error {err:.2f}")
        print(f"{label}: {cached.name}, relative L2 error of the mean shear profile {err:.3f}")
    ax.set_xlabel("y")
    ax.set_ylabel("mean of u over x and over fields")
    ax.set_title("Kolmogorov flow 64²: mean shear profile, generated vs held-out", fontsize=10)
    ax.legend(fontsize=8)
    Path(a.figure).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.figure, dpi=100)
    print(f"figure {a.figure}")


if __name__ == "__main__":
    main()
