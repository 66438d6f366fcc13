"""Console entry points (thin wrappers; the work is in :mod:`sciencegen.pipelines`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

__all__ = ["bench", "data", "generate", "main", "train"]


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


def _fail(prog: str, exc: BaseException, code: int = 2) -> None:
    print(f"{prog}: error: {exc}", file=sys.stderr)
    raise SystemExit(code)


def _guarded(prog: str, job: Callable[[], object]) -> None:
    """Run ``job``; user errors, Ctrl-C and disk faults end as one line on stderr, never a traceback.

    Exit status: 2 for a :class:`~sciencegen.errors.SciencegenError` (bad input), 130 for an interruption,
    1 for an operating-system fault (disk full, read-only filesystem, permission).
    """
    from .errors import Interrupted, SciencegenError, os_error_line

    try:
        job()
    except Interrupted as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    except SciencegenError as exc:
        _fail(prog, exc, exc.exit_code)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; what was complete is kept, rerun the same command to resume", file=sys.stderr)
        raise SystemExit(130) from None
    except OSError as exc:
        if exc.errno is None:
            raise
        _fail(prog, os_error_line(exc) + "; what was complete before is kept", 1)


def _one_line(exc: BaseException, config_name: str, overrides: list[str]) -> str:
    """A Hydra composition error as one line naming the key and what is allowed."""
    import re

    text = str(exc)
    missing = re.search(r"Could not find '([^']+)/([^']+)'", text)
    if missing:
        group, option = missing.groups()
        avail = re.findall(r"^\t(\S+)$", text, flags=re.M)
        return f"{group}={option}: no such {group}; choose one of {', '.join(a for a in avail if a != 'schema')}"
    cause = exc.__cause__ or exc
    key = getattr(cause, "full_key", None) or ""
    first = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    if key and ("not in struct" in first or re.match(r"Key '[^']+' not in", first)):
        parent, _, leaf = key.rpartition(".")
        keep = [o for o in overrides if not o.lstrip("+~").startswith(f"{key}=")]
        allowed = ""
        try:
            node = _compose(config_name, keep)
            from omegaconf import OmegaConf

            sub = OmegaConf.select(node, parent) if parent else node
            allowed = f"; {parent or 'the config'} has: {', '.join(str(k) for k in sub)}"
        except Exception:
            pass
        return f"{key}: no such key{allowed}"
    if key:
        value = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+~").split("=", 1)[0] == key), None)
        return f"{key}{'=' + value if value is not None else ''}: {first}"
    return first


def _compose(config_name: str, overrides: list[str]):
    from hydra import compose, initialize_config_module

    with initialize_config_module("sciencegen.conf", version_base="1.3"):
        return compose(config_name, overrides=overrides, return_hydra_config=True)


def _precheck(prog: str, config_name: str, argv: list[str]) -> None:
    """Compose the command line once before Hydra does, so that a mistake is one line (exit status 2).

    Hydra's own flags (``--multirun``, ``--cfg``, ``--help``, ...) skip the check and keep Hydra's messages.
    """
    if any(a.startswith("-") for a in argv):
        return
    try:
        _compose(config_name, list(argv))
    except Exception as exc:  # Hydra/OmegaConf composition errors of every kind
        print(f"{prog}: error: {_one_line(exc, config_name, list(argv))}", file=sys.stderr)
        raise SystemExit(2) from None


def _app(prog: str, config_name: str, target: str) -> None:
    """Run the Hydra app ``config_name`` with ``sciencegen.pipelines.<target>``; user errors are one line."""
    import importlib

    import hydra

    from .config import register

    register()
    _precheck(prog, config_name, sys.argv[1:])

    @hydra.main(version_base="1.3", config_path="conf", config_name=config_name)
    def _main(cfg) -> None:
        module, func = target.split(":")
        mod = importlib.import_module(f"sciencegen.pipelines.{module}")
        _guarded(prog, lambda: getattr(mod, func)(cfg))

    _main()


def data() -> None:
    """``sciencegen-data``: generate or prepare a dataset (Hydra app over ``conf/data.yaml``)."""
    _app("sciencegen-data", "data", "data:run_data")


def train() -> None:
    """``sciencegen-train``: train a score model (Hydra app over ``conf/train.yaml``); resumes its run directory."""
    _app("sciencegen-train", "train", "train:run_train")


def generate() -> None:
    """``sciencegen-generate``: sample an ensemble into a Zarr store (Hydra app over ``conf/generate.yaml``)."""
    _app("sciencegen-generate", "generate", "generate:run_generate")


def main() -> None:
    """``sciencegen`` / ``python -m sciencegen``: data -> train -> generate -> evaluate (``conf/sciencegen.yaml``)."""
    _app("sciencegen", "sciencegen", "run:run_pipeline")


def evaluate() -> None:
    """``sciencegen-evaluate``: score an ensemble store against the exact law or held-out data (``evaluate.yaml``)."""
    _app("sciencegen-evaluate", "evaluate", "evaluate:run_evaluate")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(bench())
