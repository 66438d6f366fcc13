"""Side-by-side sampler benchmark on the exact Gaussian-random-field target.

Every sampler runs on the same denoiser, grid and seeds as its sequential twin,
so rounds, NFE, wall time, error against the exact target and distance to the
sequential trajectory are measured in one run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..samplers import SAMPLERS, resolve, sample, twin
from ..targets import GaussianRandomField, spectral_error

__all__ = ["BenchRow", "DEFAULT_SAMPLERS", "format_table", "plot_tradeoff", "run_bench", "run_scaling"]

DEFAULT_SAMPLERS = ("sequential_sde", "picard_sde", "picard_wave", "paradigms", "piadm_sde",
                    "sequential_ode", "picard_ode", "piadm_ode")


@dataclass
class BenchRow:
    """One line of the benchmark table."""

    sampler: str
    options: str
    d: int
    rounds: int
    nfe: float
    nfe_ratio: float
    wall_s: float
    spectral_error: float
    dist_to_sequential: float
    fallbacks: int
    spec: str = ""


def _short(cfg: dict[str, Any], overrides: dict[str, Any]) -> str:
    keys = ["form", "lag", "blocks", "window", "tol", "norm", "accept"] if cfg["kind"] == "picard" else []
    parts = [f"{k}={cfg[k]}" for k in keys if k in cfg and cfg[k] is not None]
    parts += [f"{k}={v}" for k, v in overrides.items() if k not in keys]
    return " ".join(parts)


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
) -> list[BenchRow]:
    """Run samplers side by side on the GRF target of ``size``².

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

    Returns
    -------
    list of BenchRow
    """
    target = GaussianRandomField(size)
    rows: list[BenchRow] = []
    refs: dict[tuple, torch.Tensor] = {}
    if log:
        exact = target.sample(members, torch.Generator().manual_seed(seed), dtype=dtype)
        log(f"  exact samples ({members} members): spectral error {spectral_error(exact, target):.4f} "
            "(Monte Carlo noise: the floor for every sampler)")
    for spec in samplers:
        name, opts = parse_spec(spec)
        opts = {**(overrides or {}).get(name, {}), **opts}
        cfg = resolve(name, opts)
        seq, seq_opts = twin(name, opts)
        key = (seq, tuple(sorted(seq_opts.items())))
        if key not in refs:
            refs[key] = sample(target.denoiser, target.shape, members, seq, steps, seed, dtype=dtype,
                               **seq_opts).samples
        ref = refs[key]
        walls = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            res = sample(target.denoiser, target.shape, members, name, steps, seed, dtype=dtype, **opts)
            walls.append(time.perf_counter() - t0)
        dist = float((res.samples - ref).norm() / ref.norm())
        row = BenchRow(
            sampler=name, options=_short(cfg, opts), d=target.dim, rounds=res.stats["rounds"],
            nfe=res.stats["nfe"], nfe_ratio=res.stats["nfe"] / steps, wall_s=statistics.median(walls),
            spectral_error=spectral_error(res.samples, target), dist_to_sequential=dist,
            fallbacks=res.stats["fallbacks"], spec=spec,
        )
        rows.append(row)
        if log:
            log(f"  {name:15s} rounds={row.rounds:5d} nfe/member={row.nfe:8.0f} wall={row.wall_s:6.2f}s "
                f"spec_err={row.spectral_error:.4f} dist_seq={row.dist_to_sequential:.2e}")
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
        opts[k.strip()] = _value(v.strip())
    return name, opts


def _value(v: str) -> Any:
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"none": None, "true": True, "false": False}.get(v.lower(), v)


def format_table(rows: Sequence[BenchRow], steps: int) -> str:
    """Markdown table of benchmark rows."""
    head = ("| sampler | options | d | rounds | speed-up in rounds | NFE/member | NFE ratio | wall s | "
            "spectral error | dist. to sequential | fallbacks |")
    sep = "|" + "---|" * 11
    lines = [head, sep]
    for r in rows:
        lines.append(
            f"| {r.sampler} | {r.options} | {r.d} | {r.rounds} | {steps / r.rounds:.1f}x | {r.nfe:.0f} | "
            f"{r.nfe_ratio:.2f} | {r.wall_s:.2f} | {r.spectral_error:.4f} | {r.dist_to_sequential:.1e} | "
            f"{r.fallbacks} |"
        )
    return "\n".join(lines)


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


def rows_as_dicts(rows: Sequence[BenchRow]) -> list[dict[str, Any]]:
    """Rows as plain dicts (for JSON)."""
    return [asdict(r) for r in rows]
