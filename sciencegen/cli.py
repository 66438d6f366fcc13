"""Console entry points (thin wrappers; the work is in :mod:`sciencegen.pipelines`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["COMMANDS", "bench", "data", "evaluate", "generate", "main", "train"]


def _threads(n: int | None) -> None:
    import torch

    if n:
        torch.set_num_threads(n)


def bench(argv: list[str] | None = None) -> int:
    """``sciencegen-bench``: samplers side by side on the exact GRF target or a trained model; ``--sweep``: at equal
    accuracy (options: :func:`sciencegen.console.bench.bench_parser`)."""
    from .console.bench import bench_parser
    from .pipelines.bench import DEFAULT_SAMPLERS

    a = bench_parser(DEFAULT_SAMPLERS).parse_args(argv)
    try:
        return _bench(a)
    except KeyboardInterrupt:
        print("sciencegen-bench: interrupted; nothing to resume (a benchmark writes only at the end)", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno is None:
            raise
        from .errors import os_error_line

        print(f"sciencegen-bench: error: {os_error_line(exc)}", file=sys.stderr)
        return 1


def _bench(a: argparse.Namespace) -> int:
    from .console.bench import number_list, split_specs
    from .errors import SciencegenError
    from .pipelines import bench as B

    try:
        import torch

        _threads(a.threads)
        dtype = getattr(torch, a.dtype)
        specs = split_specs(a.samplers)
        problem = _bench_problem(a, B)
        if a.scaling:
            sizes = [int(s) for s in a.scaling.split(",") if s]
            rows = B.run_scaling(sizes, specs, a.steps, a.members, a.seed, dtype)
        elif a.sweep:
            targets = number_list(a.targets, "--targets")
            tols = number_list(a.tols, "--tols") if a.tols else None
            print(f"{problem.label} (d = {problem.dim}), {a.steps} steps, {a.members} members, {a.dtype}: sweep")
            rows = B.run_sweep(a.size, a.steps, a.members, specs, tols, a.seed, dtype, targets, log=_bar_line,
                               problem=problem, device=a.device, progress=True)
        else:
            print(f"{problem.label} (d = {problem.dim}), {a.steps} steps, {a.members} members, {a.dtype}")
            rows = B.run_bench(a.size, a.steps, a.members, specs, a.seed, a.repeats, dtype, problem=problem,
                               device=a.device)
    except (ValueError, SciencegenError) as e:
        print(f"sciencegen-bench: error: {e}", file=sys.stderr)
        return 2
    print()
    print(B.format_table(rows, a.steps))
    if a.sweep:
        print()
        print(B.format_distance_table(rows, targets))
    if a.json:
        out: Any = B.rows_as_dicts(rows)
        if a.sweep:  # the runs, and per target distance the cheapest run of each sampler (null: not reached)
            picks = {str(t): B.at_distance(rows, t) for t in targets}
            out = {"rows": out, "at_distance": {t: {spec: r and B.rows_as_dicts([r])[0] for spec, r in pick.items()}
                                                for t, pick in picks.items()}}
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    if a.figure:
        if a.sweep:
            B.plot_distance(rows, a.figure, targets, a.steps)
        else:
            B.plot_tradeoff(rows, a.figure, f"{'GRF' if a.model is None else 'model'}, {a.steps} steps")
        print(f"\nfigure: {a.figure}")
    return 0


def _bench_problem(a: argparse.Namespace, B: ModuleType) -> Any:
    """The GRF of ``--size`` or the ``--model`` checkpoint's denoiser (``--size``, if given, must be its grid)."""
    if a.model is None:
        if a.size is not None and a.size < 2:
            raise ValueError(f"--size must be an integer >= 2, got {a.size}")
        a.size = a.size or 64
        return B.grf_problem(a.size)
    if a.scaling:
        raise ValueError("--scaling runs the exact GRF at several sizes; it does not take --model")
    problem = B.checkpoint_problem(a.model, a.device)
    if a.size is not None and tuple(problem.shape[1:]) != (a.size,) * (len(problem.shape) - 1):
        raise ValueError(f"--size {a.size}: the checkpoint {a.model} samples fields of {problem.shape[1:]}; "
                         "leave --size out with --model")
    return problem


def _bar_line(line: str) -> None:
    from tqdm import tqdm

    tqdm.write(line)


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


def _app(prog: str, config_name: str, target: str) -> None:
    """Run the Hydra app ``config_name`` with ``sciencegen.pipelines.<target>``; user errors are one line.

    Ctrl-C or SIGTERM outside the job's own safe points (while starting: imports, composing the config; or
    while exiting) is one line too: the job writes nothing there that a rerun would not redo.
    """
    import signal

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)  # the jobs install their own handler around their work
    try:
        _start(prog, config_name, target)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; what was complete is kept, rerun the same command to resume", file=sys.stderr)
        raise SystemExit(130) from None


def _answered(prog: str, argv: list[str]) -> bool:
    """``--version`` / ``-V`` and ``--help`` / ``-h``: answered here (Hydra's own are about Hydra); True if so."""
    if "--version" in argv or "-V" in argv:
        from . import __version__

        print(f"{prog} (sciencegen {__version__})")
        return True
    if "--help" not in argv and "-h" not in argv:
        return False
    from .console.help import help_text

    words = [a for a in argv if a not in ("--help", "-h") and not a.startswith("-")]
    try:
        sys.stdout.write(help_text(prog, words))
    except Exception as exc:  # the overrides given with --help do not compose: say why in one line
        from .console.help import ABOUT
        from .console.precheck import one_line

        _fail(prog, one_line(exc, ABOUT[prog][0], words))  # type: ignore[arg-type]
    return True


def _start(prog: str, config_name: str, target: str) -> None:
    import importlib

    import hydra

    from .config import config_dir
    from .console.precheck import precheck

    if _answered(prog, sys.argv[1:]):
        return
    precheck(prog, config_name, sys.argv[1:])

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)
    def _main(cfg) -> None:
        module, func = target.split(":")
        _guarded(prog, lambda: getattr(importlib.import_module(f"sciencegen.pipelines.{module}"), func)(cfg))

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


#: ``python -m sciencegen.cli COMMAND ...``: the console scripts by their short names
COMMANDS: dict[str, Callable[[], object]] = {"data": data, "train": train, "generate": generate,
                                             "evaluate": evaluate, "bench": bench, "run": main}


def _module_main(argv: list[str]) -> int:
    """``python -m sciencegen.cli COMMAND [ARGS]``: run ``sciencegen-COMMAND`` (``run``: ``sciencegen``)."""
    if not argv or argv[0] not in COMMANDS:
        names = " | ".join(COMMANDS)
        print(f"usage: python -m sciencegen.cli {{{names}}} [ARGS ...]  (the sciencegen-COMMAND console scripts; "
              "run: the whole job, like `sciencegen`)", file=sys.stderr if argv else sys.stdout)
        return 2 if argv else 0
    command = argv[0]
    sys.argv = [f"sciencegen-{command}" if command != "run" else "sciencegen", *argv[1:]]
    result = COMMANDS[command]()
    return result if isinstance(result, int) else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_module_main(sys.argv[1:]))
