"""Console entry points (thin wrappers; the work is in :mod:`sciencegen.pipelines`)."""

from __future__ import annotations

import argparse
import json
import os
import sys

__all__ = ["bench", "data", "generate", "train"]


def _threads(n: int | None) -> None:
    import torch

    if n:
        torch.set_num_threads(n)


def bench(argv: list[str] | None = None) -> int:
    """``sciencegen-bench``: samplers side by side on the exact GRF target."""
    from .pipelines.bench import DEFAULT_SAMPLERS, format_table, plot_tradeoff, rows_as_dicts, run_bench, run_scaling

    p = argparse.ArgumentParser(
        prog="sciencegen-bench",
        description="Run sequential, ParaDiGMS and Picard samplers side by side on the exact Gaussian "
        "random field target and print rounds, NFE, wall time, spectral error and distance to sequential.",
    )
    p.add_argument("--size", type=int, default=64, help="grid points per side (d = size^2); default 64")
    p.add_argument("--steps", type=int, default=1000, help="grid steps; default 1000")
    p.add_argument("--members", type=int, default=8, help="ensemble members; default 8")
    p.add_argument("--samplers", default=",".join(DEFAULT_SAMPLERS),
                   help="space-separated or comma-separated names; options as name:key=value,key=value "
                   "(separate such specs with spaces)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions (median wall time); default 3")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    p.add_argument("--scaling", default=None,
                   help="comma-separated sizes: report rounds against d instead (e.g. 32,64,128,256,512)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("SCIENCEGEN_THREADS", "0")) or None,
                   help="torch CPU threads")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--figure", default=None, help="write the rounds-vs-NFE figure to this PNG")
    a = p.parse_args(argv)
    try:
        import torch

        _threads(a.threads)
        dtype = getattr(torch, a.dtype)
        specs = _split_specs(a.samplers)
        if a.scaling:
            sizes = [int(s) for s in a.scaling.split(",") if s]
            rows = run_scaling(sizes, specs, a.steps, a.members, a.seed, dtype)
        else:
            print(f"GRF {a.size}x{a.size} (d = {a.size ** 2}), {a.steps} steps, {a.members} members, {a.dtype}")
            rows = run_bench(a.size, a.steps, a.members, specs, a.seed, a.repeats, dtype)
    except ValueError as e:
        print(f"sciencegen-bench: error: {e}", file=sys.stderr)
        return 2
    print()
    print(format_table(rows, a.steps))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows_as_dicts(rows), f, indent=1)
    if a.figure:
        plot_tradeoff(rows, a.figure, f"GRF, {a.steps} steps")
        print(f"\nfigure: {a.figure}")
    return 0


def _split_specs(text: str) -> list[str]:
    # "a,b:tol=1,window=2 c" -> specs; a comma followed by a known name starts a new spec
    from .samplers import SAMPLERS

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


def _fail(prog: str, exc: BaseException) -> None:
    print(f"{prog}: error: {exc}", file=sys.stderr)
    raise SystemExit(2)


def data() -> None:
    """``sciencegen-data``: generate or prepare a dataset (Hydra app over ``conf/data.yaml``)."""
    import hydra

    @hydra.main(version_base="1.3", config_path="conf", config_name="data")
    def _main(cfg) -> None:
        from .data.fields import DataError
        from .pipelines.data import run_data

        try:
            run_data(cfg)
        except DataError as exc:
            _fail("sciencegen-data", exc)

    _main()


def train() -> None:
    """``sciencegen-train``: train a score model (Hydra app over ``conf/train.yaml``); resumes its run directory."""
    import hydra

    @hydra.main(version_base="1.3", config_path="conf", config_name="train")
    def _main(cfg) -> None:
        from .data.fields import DataError
        from .pipelines.train import TrainError, run_train

        try:
            run_train(cfg)
        except (DataError, TrainError) as exc:
            _fail("sciencegen-train", exc)

    _main()


def generate() -> None:
    """``sciencegen-generate``: sample an ensemble into a Zarr store (Hydra app over ``conf/generate.yaml``)."""
    import hydra

    from .config import register

    register()

    @hydra.main(version_base="1.3", config_path="conf", config_name="generate")
    def _main(cfg) -> None:
        from .data.fields import DataError
        from .pipelines.generate import GenerateError, run_generate

        try:
            run_generate(cfg)
        except (DataError, GenerateError) as exc:
            _fail("sciencegen-generate", exc)

    _main()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(bench())
