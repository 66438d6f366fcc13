"""Picard on a trained denoiser against the exact oracle, at equal distance to the sequential twin (issue 17, item 4).

Run from the repository root after ``benchmarks/train_bench_models.py`` (which prints the checkpoint paths)::

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE python benchmarks/learned_picard.py --model grf32 \\
        --json /tmp/learned_picard.json --markdown /tmp/learned_picard.md

For one sampler (default ``picard_dpm2m``, 64 steps, 8 members, seed 0, float32 on the CPU) the script sweeps the
tolerance (``--tols``) and the window (``--windows``) on two denoisers:

* the trained checkpoint (``--model``: a benchmark model name, resolved in the cache of
  ``train_bench_models.py`` by the same config hash, or a run directory / ``step_*.pt`` file), its EMA weights
  in normalised units, exactly what ``sciencegen-generate`` samples with;
* the exact oracle of the law the model was trained on (GRF: :class:`~sciencegen.targets.GaussianRandomField`
  of the same size, unit variance like the normalised data), also in float32, to compare like with like
  (``--no-oracle`` for a dataset without an exact law, e.g. Kolmogorov).

Every run records the rounds, NFE per member, sequential fallbacks, the largest unaccepted residual per round
and the relative L2 distance ``|x - x_seq| / |x_seq|`` of the ensemble to the sequential twin (``dpm2m``) drawn
with the same denoiser, seed and dtype.  The comparison at matched distance: per window (and over all windows,
the cheapest), the NFE and rounds needed to come within a distance ``D`` are read off each denoiser's
Pareto front (cheapest NFE reaching ``<= D``, log-log interpolation between the bracketing sweep points), at
the distances ``--targets``; the ratio learned / oracle is the issue's figure of merit (goal: <= 1.2 with
rounds <= 8).  Extra sampler options for both (e.g. a new convergence option) go through ``--set key=value``.
Output: a markdown table (stdout, ``--markdown``) and every number (``--json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

import sciencegen
from sciencegen.samplers import twin

log = logging.getLogger("learned_picard")

Denoiser = Callable[..., torch.Tensor]


def value(v: str) -> Any:
    """A ``--set`` value: int, float, bool, None (``null``) or the string."""
    low = v.lower()
    if low == "null":
        return None
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def find_checkpoint(model: str, cache: str | None) -> Path:
    """A run directory or checkpoint path, or the cached run of benchmark model ``model`` (its current hash)."""
    if Path(model).exists():
        return Path(model)
    import train_bench_models as tbm

    cfg = tbm.compose(model, [])
    run = tbm.cache_root(cache) / f"{model}-{tbm.config_hash(cfg)}"
    if not tbm.has_checkpoint(run):
        raise SystemExit(f"--model {model}: no checkpoint in {run}; "
                         f"run benchmarks/train_bench_models.py --only {model}")
    return run


def learned(path: Path) -> tuple[Denoiser, tuple[int, ...], torch.Tensor | None, dict]:
    """The checkpoint's EMA denoiser (float32, CPU), the member shape, its static condition and the meta."""
    from sciencegen.models.build import load_model

    model, meta = load_model(path)
    model = model.float()
    shape = (len(meta["data"]["variables"]), *meta["data"]["field_shape"])
    from kolmogorov_quickstart import static_condition  # the script beside this one

    return model, shape, static_condition(meta), meta


def oracle(meta: dict) -> tuple[Denoiser, tuple[int, ...]] | None:
    """The exact float32 denoiser of the law the checkpoint was trained on (GRF only), else ``None``."""
    ds = meta.get("dataset") or {}
    if "GRFSource" not in str(ds.get("_target_", "")) and ds.get("name") != "grf":
        return None
    from sciencegen.targets import GaussianRandomField

    kw = {k: ds[k] for k in ("slope", "k0", "channels", "ndim") if k in ds}
    grf = GaussianRandomField(int(ds.get("size", meta["data"]["field_shape"][-1])), **kw)
    std = float(meta["data"]["std"][0])
    if abs(std - 1.0) > 0.05:  # the model samples normalised fields: the oracle must too
        log.warning("data std %.3f: the oracle works in physical units, the model in normalised ones", std)
    return grf.denoiser, tuple(grf.shape)


def draw(den: Denoiser, shape: Sequence[int], cond: torch.Tensor | None, name: str, steps: int, members: int,
         seed: int, opts: dict[str, Any]) -> sciencegen.SampleResult:
    """``sciencegen.sample`` in float32 on the CPU (one batch of all members)."""
    return sciencegen.sample(den, shape, members, name, steps, seed, dtype=torch.float32, cond=cond, **opts)


def sweep(den: Denoiser, shape: Sequence[int], cond: torch.Tensor | None, a: argparse.Namespace, label: str
          ) -> list[dict[str, Any]]:
    """One row per (window, tol): rounds, NFE/member, fallbacks, residual trace, distance to the twin."""
    seq, seq_opts = twin(a.sampler, dict(a.set))
    ref = draw(den, shape, cond, seq, a.steps, a.members, a.seed, seq_opts).samples.double()
    rows = []
    for w in a.windows:
        for tol in a.tols:
            opts = {**dict(a.set), "tol": tol, "window": w}
            t0 = time.perf_counter()
            res = draw(den, shape, cond, a.sampler, a.steps, a.members, a.seed, opts)
            wall = time.perf_counter() - t0
            dist = float((res.samples.double() - ref).norm() / ref.norm())
            st = res.stats
            rows.append({"model": label, "window": w, "tol": tol, "rounds": st["rounds"], "nfe": st["nfe"],
                         "nfe_max": float(st["nfe_per_member"].max()), "fallbacks": st["fallbacks"],
                         "dist": dist, "wall_s": wall, "residuals": st["residuals"],
                         "rounds_per_member": st["rounds_per_member"].tolist()})
            log.info("%-8s w=%-3d tol=%-6g rounds=%3d nfe/member=%6.1f fallbacks=%d dist=%.2e (%.1fs)", label, w,
                     tol, st["rounds"], st["nfe"], st["fallbacks"], dist, wall)
    return rows


def front(rows: Sequence[dict]) -> list[dict]:
    """The Pareto front: sweep points by increasing distance, each cheaper (NFE) than every closer one."""
    out: list[dict] = []
    for r in sorted(rows, key=lambda r: (r["dist"], r["nfe"])):
        if r["dist"] > 0 and (not out or r["nfe"] < out[-1]["nfe"]):
            out.append(r)
    return out


def at_distance(rows: Sequence[dict], target: float) -> dict[str, float] | None:
    """NFE and rounds to come within ``target`` of the twin: log-log interpolation on the Pareto front.

    ``None`` when no sweep point is that close; the cheapest point when every point is (no extrapolation; marked
    ``capped``: an upper bound, shown as ``<=`` in the table).
    """
    f = front(rows)
    if not f or f[0]["dist"] > target:
        return None
    if f[-1]["dist"] <= target:
        return {"nfe": f[-1]["nfe"], "rounds": f[-1]["rounds"], "tol": f[-1]["tol"], "window": f[-1]["window"],
                "capped": True}
    hi = next(i for i, r in enumerate(f) if r["dist"] > target)
    p, q = f[hi - 1], f[hi]  # p.dist <= target < q.dist, p.nfe > q.nfe
    t = (math.log(target) - math.log(p["dist"])) / (math.log(q["dist"]) - math.log(p["dist"]))

    def interp(k: str) -> float:
        return math.exp((1 - t) * math.log(p[k]) + t * math.log(q[k]))

    return {"nfe": interp("nfe"), "rounds": interp("rounds"), "tol": p["tol"], "window": p["window"]}


def matched(learn: Sequence[dict], orac: Sequence[dict], targets: Sequence[float], windows: Sequence[int]
            ) -> list[dict]:
    """Learned vs oracle NFE and rounds at each target distance, per window and over all windows."""
    out = []
    for w in [*windows, None]:
        lw = [r for r in learn if w is None or r["window"] == w]
        ow = [r for r in orac if w is None or r["window"] == w]
        for d in targets:
            a, b = at_distance(lw, d), at_distance(ow, d)
            ratio = a["nfe"] / b["nfe"] if a and b else None
            out.append({"window": w if w is not None else "best", "dist": d, "learned": a, "oracle": b,
                        "nfe_ratio": ratio})
    return out


def markdown(learn: Sequence[dict], orac: Sequence[dict], match: Sequence[dict], a: argparse.Namespace) -> str:
    """The sweep table and the matched-distance table."""
    lines = [f"### `{a.sampler}`, {a.steps} steps, {a.members} members, seed {a.seed}, float32 "
             f"({a.model} vs exact oracle){' ' + str(dict(a.set)) if a.set else ''}", "",
             "| model | window | tol | rounds | NFE/member | fallbacks | dist to twin |",
             "|---|---|---|---|---|---|---|"]
    for r in [*learn, *orac]:
        lines.append(f"| {r['model']} | {r['window']} | {r['tol']:g} | {r['rounds']} | {r['nfe']:.1f} | "
                     f"{r['fallbacks']} | {r['dist']:.2e} |")
    lines += ["", "At matched distance (Pareto front, log-log interpolation):", "",
              "| window | distance | learned NFE | learned rounds | oracle NFE | oracle rounds | NFE ratio |",
              "|---|---|---|---|---|---|---|"]

    def cell(x: dict | None, k: str) -> str:
        return f"{'<=' if x.get('capped') else ''}{x[k]:.1f}" if x else "—"

    for m in match:
        ratio = f"{m['nfe_ratio']:.2f}" if m["nfe_ratio"] else "—"
        lines.append(f"| {m['window']} | {m['dist']:.0e} | {cell(m['learned'], 'nfe')} | "
                     f"{cell(m['learned'], 'rounds')} | {cell(m['oracle'], 'nfe')} | {cell(m['oracle'], 'rounds')} | "
                     f"{ratio} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Command line: see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="grf32", help="benchmark model name (grf32, kolmogorov64) or a run dir / "
                   "checkpoint file; default grf32")
    p.add_argument("--cache", default=None, help="cache root of train_bench_models.py")
    p.add_argument("--sampler", default="picard_dpm2m")
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tols", default="1,0.3,0.1,0.05,0.03,0.01,0.003")
    p.add_argument("--windows", default="16,32,64")
    p.add_argument("--targets", default="1e-2,3e-3,1e-3,3e-4", help="distances of the matched comparison")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra sampler option (both)")
    p.add_argument("--no-oracle", action="store_true", help="only the learned model")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None)
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(a.threads)
    a.tols = [float(v) for v in a.tols.split(",")]
    a.windows = [int(v) for v in a.windows.split(",")]
    targets = [float(v) for v in a.targets.split(",")]
    a.set = [(k, value(v)) for k, _, v in (s.partition("=") for s in a.set)]

    path = find_checkpoint(a.model, a.cache)
    den, shape, cond, meta = learned(path)
    log.info("model %s (step %d), member shape %s", meta["path"], meta["step"], shape)
    learn = sweep(den, shape, cond, a, "learned")
    orac: list[dict] = []
    exact = None if a.no_oracle else oracle(meta)
    if exact is not None:
        orac = sweep(exact[0], exact[1], None, a, "oracle")
    match = matched(learn, orac, targets, a.windows) if orac else []
    text = markdown(learn, orac, match, a)
    log.info("\n%s", text)
    if a.markdown:
        Path(a.markdown).write_text(text)
    if a.json:
        Path(a.json).write_text(json.dumps({"checkpoint": meta["path"], "step": meta["step"], "sampler": a.sampler,
                                            "steps": a.steps, "members": a.members, "seed": a.seed,
                                            "options": dict(a.set), "learned": learn, "oracle": orac,
                                            "matched": match}, indent=1, default=str))


if __name__ == "__main__":
    main()
