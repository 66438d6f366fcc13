"""Side-by-side sampler benchmark, and the sweep that compares samplers at equal accuracy.

Every sampler runs on the same denoiser, grid and seeds as its sequential twin, so rounds, NFE, wall time, error
against the exact target and distance to the sequential trajectory are measured in one run.  The denoiser is the
exact Gaussian-random-field target's (:func:`grf_problem`) or a trained checkpoint's (:func:`checkpoint_problem`).
:func:`run_sweep` walks each sampler's tolerance ladder and :func:`at_distance` reads off the cheapest point within
a given distance to the sequential trajectory: samplers are compared at equal accuracy, never at each one's own
tolerance (``docs/benchmarks.md``).
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..data.fields import FieldSpec
from ..generation.masks import mask_only
from ..generation.model import resolve_denoiser
from ..models.build import load_model
from ..samplers import OPTIONS, SAMPLERS, SampleResult, check_sampler, resolve, sample, twin
from ..targets import GaussianRandomField, spectral_error

__all__ = ["DEFAULT_SAMPLERS", "DEFAULT_TARGETS", "BenchProblem", "BenchRow", "at_distance", "checkpoint_problem",
           "format_distance_table", "format_table", "grf_problem", "parse_spec", "plot_distance", "plot_tradeoff",
           "rows_as_dicts", "run_bench", "run_scaling", "run_sweep", "tol_ladder"]

_log = logging.getLogger(__name__)

DEFAULT_SAMPLERS = ("sequential_sde", "picard_sde", "picard_wave", "paradigms", "piadm_sde",
                    "sequential_ode", "picard_ode", "piadm_ode")

#: distances to the sequential trajectory at which :func:`format_distance_table` compares samplers
DEFAULT_TARGETS = (3e-3, 3e-4)


@dataclass
class BenchRow:
    """One line of the benchmark table (one sampler at one tolerance).

    ``spectral_error`` is ``None`` where the samples' exact law is unknown (a trained model of other data);
    ``tol`` is the run's tolerance (``None``: a sequential sampler); ``sequential_rounds`` the rounds of the
    sequential twin it is measured against.
    """

    sampler: str
    options: str
    d: int
    rounds: int
    nfe: float
    nfe_ratio: float
    wall_s: float
    spectral_error: float | None
    dist_to_sequential: float
    fallbacks: int
    spec: str = ""
    tol: float | None = None
    sequential_rounds: int | None = None


@dataclass
class BenchProblem:
    """What every sampler of a benchmark samples.

    Attributes
    ----------
    denoiser
        ``denoiser(x, sigma) -> E[x0 | x]`` in the units the samplers walk (normalised for a trained model).
    shape
        One member's shape ``(channels, *grid)``.
    label
        What it is, for logs and titles.
    target
        The exact law of the samples in physical units (``None``: no spectral error).
    mean, std
        Per channel: physical = sample * std + mean (``None``: the samples are physical).
    """

    denoiser: Callable[..., torch.Tensor]
    shape: tuple[int, ...]
    label: str = "denoiser"
    target: GaussianRandomField | None = None
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    @property
    def dim(self) -> int:
        """Dimension ``d`` of one member."""
        return math.prod(self.shape)

    def spectral_error(self, samples: torch.Tensor) -> float | None:
        """:func:`~sciencegen.targets.spectral_error` of ``[members, *shape]`` samples (``None``: no exact law)."""
        if self.target is None:
            return None
        x = samples.detach().to("cpu", torch.float64)
        if self.std is not None and self.mean is not None:
            view = (-1,) + (1,) * (x.ndim - 2)  # per channel, any rank
            x = x * torch.as_tensor(self.std, dtype=x.dtype).reshape(view) + torch.as_tensor(
                self.mean, dtype=x.dtype).reshape(view)
        return spectral_error(x, self.target)


def grf_problem(size: int) -> BenchProblem:
    """The exact Gaussian random field on a ``size × size`` grid and its exact denoiser."""
    target = GaussianRandomField(size)
    return BenchProblem(target.denoiser, target.shape, f"GRF {size}x{size}", target)


def checkpoint_problem(checkpoint: str | Path, device: torch.device | str = "cpu") -> BenchProblem:
    """A trained checkpoint's denoiser, loaded and checked as ``sciencegen-generate`` loads it.

    Parameters
    ----------
    checkpoint
        A ``step_*.pt`` file or a training run directory (its newest valid checkpoint).
    device
        Where to run the model.

    Returns
    -------
    BenchProblem
        Its ``target`` is the exact law when the checkpoint was trained on independent Gaussian random fields
        of its own grid (``dataset=grf``), else ``None`` (the spectral error is left blank).

    Raises
    ------
    ValueError
        A conditional model (the benchmark samples unconditional ensembles).
    sciencegen.errors.SciencegenError
        No valid checkpoint, or one that does not fit its own training data.
    """
    _, meta = load_model(checkpoint)
    data = meta.get("data") or {}
    trained = data.get("conditioning")
    if trained and not mask_only(trained):
        raise ValueError(f"--model {checkpoint}: a conditional model ({', '.join(sorted(trained.get('kinds') or {}))}"
                         "); sciencegen-bench samples unconditional models only")
    grid = tuple(int(v) for v in data.get("field_shape", ()))
    spec = FieldSpec(tuple(data.get("variables", ())), tuple(data.get("sample_dims", ())),
                     tuple(data.get("field_dims", ())), dict(data.get("periodic") or {}))
    info = resolve_denoiser({**meta["model"], "checkpoint": meta["path"]}, meta.get("dataset") or {}, spec, grid,
                            torch.device(device))
    shape = (len(info.variables), *grid)
    return BenchProblem(info.denoiser, shape, info.label, _grf_law(meta.get("dataset") or {}, shape),
                        info.mean, info.std)


def _grf_law(dataset: dict[str, Any], shape: tuple[int, ...]) -> GaussianRandomField | None:
    """The exact law of a ``dataset=grf`` config of independent samples on ``shape``; ``None`` otherwise."""
    if not str(dataset.get("_target_", "")).endswith("GRFSource") or dataset.get("ar") is not None:
        return None
    try:
        law = GaussianRandomField(int(dataset["size"]),
                                  **{k: dataset[k] for k in ("slope", "k0", "channels", "ndim") if k in dataset})
    except (KeyError, TypeError, ValueError):
        return None
    return law if law.shape == tuple(shape) else None


def _short(cfg: dict[str, Any], overrides: dict[str, Any]) -> str:
    keys = ["form", "lag", "blocks", "window", "tol", "norm", "newton", "accept"] if cfg["kind"] != "sequential" else []
    parts = [f"{k}={cfg[k]}" for k in keys if k in cfg and cfg[k] is not None]
    parts += [f"{k}={v}" for k, v in overrides.items() if k not in keys]
    return " ".join(parts)


@dataclass
class _Run:
    """What every run of one benchmark shares: the problem, the grid, the ensemble and the twins' samples."""

    problem: BenchProblem
    steps: int
    members: int
    seed: int
    dtype: torch.dtype
    device: torch.device | str | None
    refs: dict[tuple, tuple[SampleResult, float]]

    def sample(self, name: str, opts: dict[str, Any]) -> tuple[SampleResult, float]:
        """A run and its wall time in seconds."""
        t0 = time.perf_counter()
        res = sample(self.problem.denoiser, self.problem.shape, self.members, name, self.steps, self.seed,
                     device=self.device, dtype=self.dtype, **opts)
        return res, time.perf_counter() - t0

    def measure(self, spec: str, name: str, opts: dict[str, Any], repeats: int = 1) -> BenchRow:
        """One sampler's row: rounds, NFE, median wall time, spectral error, distance to its twin (run once per
        twin; a sequential sampler timed once is its own twin's run)."""
        cfg = resolve(name, opts)
        seq, seq_opts = twin(name, opts)
        key = (seq, tuple(sorted(seq_opts.items())))
        if key not in self.refs:
            self.refs[key] = self.sample(seq, seq_opts)
        ref = self.refs[key][0]
        if repeats <= 1 and key == (name, tuple(sorted(opts.items()))):
            res, walls = ref, [self.refs[key][1]]
        else:
            runs = [self.sample(name, opts) for _ in range(max(1, repeats))]
            res, walls = runs[-1][0], [wall for _, wall in runs]
        dist = float((res.samples - ref.samples).norm() / ref.samples.norm())
        return BenchRow(
            sampler=name, options=_short(cfg, opts), d=self.problem.dim, rounds=res.stats["rounds"],
            nfe=res.stats["nfe"], nfe_ratio=res.stats["nfe"] / ref.stats["nfe"], wall_s=statistics.median(walls),
            spectral_error=self.problem.spectral_error(res.samples), dist_to_sequential=dist,
            fallbacks=res.stats["fallbacks"], spec=spec, tol=cfg.get("tol"),
            sequential_rounds=ref.stats["rounds"],
        )


def _row_line(row: BenchRow) -> str:
    spec = "" if row.spectral_error is None else f" spec_err={row.spectral_error:.4f}"
    tol = "" if row.tol is None else f" tol={row.tol:<8g}"
    return (f"  {row.sampler:15s}{tol} rounds={row.rounds:5d} nfe/member={row.nfe:8.0f} wall={row.wall_s:6.2f}s"
            f"{spec} dist_seq={row.dist_to_sequential:.2e}")


def run_bench(
    size: int = 64,
    steps: int = 1000,
    members: int = 8,
    samplers: Sequence[str] = DEFAULT_SAMPLERS,
    seed: int = 0,
    repeats: int = 1,
    dtype: torch.dtype = torch.float64,
    overrides: dict[str, dict[str, Any]] | None = None,
    log: Callable[[str], None] | None = print,
    *,
    problem: BenchProblem | None = None,
    device: torch.device | str | None = None,
) -> list[BenchRow]:
    """Run samplers side by side on the GRF target of ``size``² (or on ``problem``).

    Parameters
    ----------
    size, steps, members, seed, dtype
        Problem: GRF on a ``size × size`` grid, ``steps`` grid steps, ensemble.
    samplers
        Names from :data:`sciencegen.samplers.SAMPLERS`; ``name:key=value,...``
        adds options (e.g. ``picard_sde:tol=0.003,window=64``).
    repeats
        Timed repetitions per sampler; the median wall time is reported.
    overrides
        Extra options per sampler name.
    log
        Called with a line per sampler (``None``: quiet).
    problem
        Another denoiser to sample (e.g. :func:`checkpoint_problem`); ``size`` is then unused.
    device
        Where to sample.

    Returns
    -------
    list of BenchRow
    """
    problem = problem or grf_problem(size)
    run = _Run(problem, steps, members, seed, dtype, device, {})
    if log and problem.target is not None:
        exact = problem.target.sample(members, torch.Generator().manual_seed(seed), dtype=dtype)
        log(f"  exact samples ({members} members): spectral error {spectral_error(exact, problem.target):.4f} "
            "(Monte Carlo noise: the floor for every sampler)")
    rows: list[BenchRow] = []
    for spec in samplers:
        name, opts = parse_spec(spec)
        row = run.measure(spec, name, {**(overrides or {}).get(name, {}), **opts}, repeats)
        rows.append(row)
        if log:
            log(_row_line(row))
    return rows


def run_scaling(
    sizes: Sequence[int] = (32, 64, 128, 256, 512),
    samplers: Sequence[str] = ("picard_sde", "picard_wave"),
    steps: int = 1000,
    members: int = 1,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    log: Callable[[str], None] | None = print,
) -> list[BenchRow]:
    """Rounds against dimension at fixed tolerance (the seed paper's claim)."""
    rows = []
    for n in sizes:
        if log:
            log(f"d = {n}^2")
        rows += run_bench(n, steps, members, samplers, seed, 1, dtype, log=log)
    return rows


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"picard_sde:tol=0.003,window=64"`` -> ``("picard_sde", {"tol": 0.003, "window": 64})``."""
    name, _, rest = spec.partition(":")
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    opts: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        k, eq, v = item.partition("=")
        if not eq:
            raise ValueError(f"bad sampler option {item!r} in {spec!r}; use key=value")
        opts[k.strip()] = _value(k.strip(), v.strip())
    return name, opts


def _value(key: str, v: str) -> Any:
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    # "none" is None only for an option whose default is None (window=none); newton=none is a value
    nothing = key not in OPTIONS or OPTIONS[key].default is None
    return {"none": None if nothing else v, "true": True, "false": False}.get(v.lower(), v)


def tol_ladder(tol: float, count: int = 8) -> list[float]:
    """``count`` tolerances from ``10 tol`` down by √10 a rung, two digits (``tol = 0.1``: 1, 0.32, … 3.2e-4)."""
    return [float(f"{tol * 10 ** (1 - k / 2):.2g}") for k in range(count)]


def _ladder(spec: str, tols: Sequence[float] | None, steps: int) -> tuple[str, dict[str, Any], list, bool]:
    """A sweep spec's sampler, options (without ``tols``), tolerances loosest first (``[None]``: sequential) and
    whether they are the automatic ladder.

    The spec's own ``tol=`` fixes one point, its ``tols=1/0.1/0.01`` its ladder; else ``tols``, else
    :func:`tol_ladder` of the sampler's default.
    """
    name, opts = parse_spec(spec)
    own = opts.pop("tols", None)
    cfg = resolve(name, opts)
    if "tol" not in cfg:
        if own is not None:
            raise ValueError(f"{spec!r}: {name} is sequential and takes no tols")
        return name, opts, [None], False
    if own is not None and "tol" in opts:
        raise ValueError(f"{spec!r}: give tol= (one point) or tols= (a ladder), not both")
    auto = own is None and "tol" not in opts and not tols
    if "tol" in opts:
        ladder = [opts.pop("tol")]
    elif own is not None:
        try:
            ladder = [float(v) for v in str(own).split("/")]
        except ValueError:
            raise ValueError(f"bad tols={own!r} in {spec!r}; use tols=1/0.1/0.01") from None
    else:
        ladder = list(tols) if tols else tol_ladder(cfg["tol"])
    out = sorted({float(t) for t in ladder}, reverse=True)
    for t in out:
        check_sampler(name, steps, **opts, tol=t)
    return name, opts, out, auto


def run_sweep(
    size: int = 64,
    steps: int = 1000,
    members: int = 8,
    samplers: Sequence[str] = DEFAULT_SAMPLERS,
    tols: Sequence[float] | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    targets: Sequence[float] = DEFAULT_TARGETS,
    denoiser: Callable[..., torch.Tensor] | None = None,
    shape: Sequence[int] | None = None,
    log: Callable[[str], None] | None = _log.info,
    *,
    problem: BenchProblem | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> list[BenchRow]:
    """Run every sampler at every tolerance of its ladder against its sequential twin (equal-accuracy sweep).

    Parameters
    ----------
    size, steps, members, seed, dtype
        GRF on a ``size × size`` grid (unless ``denoiser`` or ``problem``), grid steps, ensemble, precision.
    samplers
        Specs ``name[:key=value,...]``.  A parallel spec (one with a ``tol``) runs at each tolerance of its
        ladder: its own ``tol=`` fixes one point, its own ``tols=1/0.1/0.01`` its ladder; else ``tols``, else
        :func:`tol_ladder` of the sampler's default tolerance.  A sequential spec runs once.
    tols
        The ladder of every parallel spec that does not bring its own.
    targets
        Distances to the sequential trajectory the sweep is read at (:func:`at_distance`): the automatic ladder
        (:func:`tol_ladder`) stops at the first tolerance within a tenth of the smallest (tighter ones only cost
        more rounds); given tolerances all run.
    denoiser, shape
        Another denoiser ``denoiser(x, sigma)`` and its member shape (no spectral error).
    log
        Called with a line per run (``None``: quiet).
    problem
        Another :class:`BenchProblem` (e.g. :func:`checkpoint_problem`).
    device
        Where to sample.
    progress
        Show a progress bar over the (sampler, tolerance) runs.

    Returns
    -------
    list of BenchRow
        One per run, ``spec`` the sampler spec (without ``tol``/``tols``) and ``tol`` the run's tolerance.
    """
    if denoiser is not None:
        if shape is None:
            raise ValueError("run_sweep: a denoiser needs the shape of one member (shape=...)")
        problem = BenchProblem(denoiser, tuple(int(n) for n in shape))
    problem = problem or grf_problem(size)
    plan = [(spec, *_ladder(spec, tols, steps)) for spec in samplers]
    run = _Run(problem, steps, members, seed, dtype, device, {})
    stop = min(targets) / 10 if len(targets) else -1.0
    rows: list[BenchRow] = []
    with tqdm(total=sum(len(p[3]) for p in plan), desc="sweep", unit="run", leave=False,
              disable=None if progress else True) as bar:
        for spec, name, opts, ladder, auto in plan:
            for k, tol in enumerate(ladder):
                bar.set_postfix_str(f"{spec} tol={tol}", refresh=True)
                rows.append(run.measure(spec, name, opts if tol is None else {**opts, "tol": tol}))
                bar.update(1)
                if log:
                    log(_row_line(rows[-1]))
                if auto and rows[-1].dist_to_sequential <= stop and k + 1 < len(ladder):
                    bar.update(len(ladder) - k - 1)
                    if log:
                        log(f"  {spec}: within {stop:.1e} of sequential at tol={tol:g}; tighter tolerances skipped")
                    break
    return rows


def at_distance(rows: Sequence[BenchRow], target: float) -> dict[str, BenchRow | None]:
    """Per sampler spec, the cheapest run within ``target`` of the sequential trajectory.

    Parameters
    ----------
    rows
        Runs of :func:`run_sweep` (or :func:`run_bench`), grouped by ``spec`` (by ``sampler`` where it is empty).
    target
        Largest relative distance to the sequential trajectory.

    Returns
    -------
    dict
        ``spec -> row`` in the order the specs first appear: of the runs with ``dist_to_sequential <= target``
        the one with the fewest rounds, ties broken by the fewest NFE per member; ``None`` where no run got
        there.  The row carries its ``tol``, ``nfe``, ``nfe_ratio`` and the twin's ``sequential_rounds``.
    """
    out: dict[str, BenchRow | None] = {}
    for r in rows:
        key = r.spec or r.sampler
        best = out.setdefault(key, None)
        if r.dist_to_sequential <= target and (best is None or (r.rounds, r.nfe) < (best.rounds, best.nfe)):
            out[key] = r
    return out


def _sci(x: float) -> str:
    """``0.003`` -> ``3e-3``, ``0.00025`` -> ``2.5e-4``."""
    mant, exp = f"{x:.1e}".split("e")
    return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"


def format_distance_table(rows: Sequence[BenchRow], targets: Sequence[float] = DEFAULT_TARGETS) -> str:
    """Markdown table of a sweep read at equal accuracy: per sampler and target distance, the fewest rounds.

    Columns: sampler | per target: rounds at the target, their NFE ratio (NFE per member over the sequential
    twin's), the tolerance that got there ("not reached" where none did) | the sequential twin's rounds.
    """
    picks = [at_distance(rows, t) for t in targets]
    head = "".join(f" rounds at {_sci(t)} | NFE ratio | tol |" for t in targets)
    lines = [f"| sampler |{head} sequential rounds |", "|" + "---|" * (2 + 3 * len(targets))]
    for spec in (picks[0] if picks else at_distance(rows, 0.0)):
        cells = []
        for pick in picks:
            r = pick[spec]
            cells += (["not reached", "", ""] if r is None else
                      [str(r.rounds), f"{r.nfe_ratio:.2f}", "" if r.tol is None else f"{r.tol:g}"])
        seq = next((r.sequential_rounds for r in rows if (r.spec or r.sampler) == spec), None)
        lines.append(f"| {spec} | " + " | ".join([*cells, "" if seq is None else str(seq)]) + " |")
    return "\n".join(lines)


def format_table(rows: Sequence[BenchRow], steps: int) -> str:
    """Markdown table of benchmark rows."""
    head = ("| sampler | options | d | rounds | speed-up in rounds | NFE/member | NFE ratio | wall s | "
            "spectral error | dist. to sequential | fallbacks |")
    sep = "|" + "---|" * 11
    lines = [head, sep]
    for r in rows:
        lines.append(
            f"| {r.sampler} | {r.options} | {r.d} | {r.rounds} | {steps / r.rounds:.1f}x | {r.nfe:.0f} | "
            f"{r.nfe_ratio:.2f} | {r.wall_s:.2f} | {_spec_err(r)} | {r.dist_to_sequential:.1e} | "
            f"{r.fallbacks} |"
        )
    return "\n".join(lines)


def _spec_err(r: BenchRow) -> str:
    return "" if r.spectral_error is None else f"{r.spectral_error:.4f}"


def plot_tradeoff(rows: Sequence[BenchRow], path: str, title: str = "") -> None:
    """Sequential rounds against NFE per member, coloured by distance to the sequential trajectory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    par = [r for r in rows if r.dist_to_sequential > 0]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    if par:
        dist = [max(r.dist_to_sequential, 1e-6) for r in par]
        sc = ax.scatter([r.nfe for r in par], [r.rounds for r in par], c=dist, s=45, cmap="viridis",
                        norm=LogNorm(vmin=min(dist), vmax=max(max(dist), min(dist) * 10)))
        fig.colorbar(sc, ax=ax, label="relative distance to the sequential trajectory")
        for r in par:
            ax.annotate(r.spec or r.sampler, (r.nfe, r.rounds), textcoords="offset points", xytext=(4, 3),
                        fontsize=7)
    seq: dict[int, list[str]] = {}
    for r in rows:
        if r.dist_to_sequential == 0:
            seq.setdefault(r.rounds, []).append(r.sampler)
    for rounds, names in seq.items():
        ax.axhline(rounds, color="grey", lw=0.8, ls="--")
        ax.text(0.01, rounds, f" {', '.join(names)}: {rounds} rounds", transform=ax.get_yaxis_transform(),
                va="top", fontsize=7, color="grey")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("denoiser evaluations per member (NFE)")
    ax.set_ylabel("sequential rounds (latency)")
    ax.set_title(title or "rounds vs NFE")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_distance(rows: Sequence[BenchRow], path: str | Path, targets: Sequence[float] = DEFAULT_TARGETS,
                  steps: int | None = None, title: str = "") -> None:
    """Rounds (left) and NFE per member (right) against the distance to the sequential trajectory, per sampler.

    One line with markers per sampler spec through its tolerances (every other one annotated), dashed
    verticals at the ``targets``; a sequential sampler is a horizontal line at its rounds (its distance is 0).
    Distances below 1e-12 are drawn at 1e-12.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[BenchRow]] = {}
    for r in rows:
        groups.setdefault(r.spec or r.sampler, []).append(r)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), sharex=True)
    colours = plt.get_cmap("tab10")
    for i, (spec, runs) in enumerate(groups.items()):
        c = colours(i % 10)
        if all(r.tol is None for r in runs):  # sequential: distance 0
            axes[0].axhline(runs[0].rounds, color=c, lw=1.2, ls=":", label=f"{spec} ({runs[0].rounds} rounds)")
            axes[1].axhline(runs[0].nfe, color=c, lw=1.2, ls=":", label=spec)
            continue
        runs = sorted(runs, key=lambda r: -(r.tol or 0.0))
        x = [max(r.dist_to_sequential, 1e-12) for r in runs]
        for ax, y in ((axes[0], [r.rounds for r in runs]), (axes[1], [r.nfe for r in runs])):
            ax.plot(x, y, "-o", color=c, ms=4, lw=1.3, label=spec)
            for k in range(0, len(runs), 2):
                ax.annotate(f"{runs[k].tol:g}", (x[k], y[k]), textcoords="offset points", xytext=(3, 4),
                            fontsize=7, color=c)
    d = rows[0].d if rows else 0
    for ax, label in ((axes[0], "sequential rounds (latency)"), (axes[1], "denoiser evaluations per member (NFE)")):
        for t in targets:
            ax.axvline(t, color="grey", lw=0.9, ls="--")
            ax.text(t, 0.98, f" {_sci(t)}", transform=ax.get_xaxis_transform(), va="top", fontsize=8, color="grey")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("relative L2 distance to the sequential trajectory")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    grid = f"{steps} steps, " if steps else ""
    fig.suptitle(title or f"rounds and NFE at equal accuracy: d = {d}, {grid}numbers at markers: tol")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def rows_as_dicts(rows: Sequence[BenchRow]) -> list[dict[str, Any]]:
    """Rows as plain dicts (for JSON)."""
    return [asdict(r) for r in rows]
