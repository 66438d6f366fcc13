"""GPU generation benchmark: ``picard_sde`` against ``sequential_sde`` for a U-Net, latency and throughput.

Usage (one GPU; never run by CI; estimated 3-6 minutes with the defaults, and no repeat is begun after
``--time-limit`` seconds, 420 by default, so the script ends within 8 minutes)::

    python benchmarks/gpu_generate.py --json gpu_generate.json

CPU smoke test (tiny sizes, well under a minute)::

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE python benchmarks/gpu_generate.py --quick --device cpu

Measured in one run, interleaved case by case within every repeat (A, B, A, B, ...) so that clock and
thermal drift hit both samplers alike, with ``torch.cuda.synchronize()`` around every timer and untimed
warm-up runs first (also the ``torch.compile`` warm-up with ``--compile``):

1. single-member latency: ``sciencegen.sample(..., members=1)`` with the Picard sampler and with its
   sequential twin (1000 steps by default) on an EDM-preconditioned U-Net (``edm_unet``) on a 256² field:
   median seconds of each, the ratio sequential / Picard, rounds and NFE per member.  The same pair is
   also timed with the exact denoiser of the Gaussian random field at the same size (``Oracle``): a cheap
   denoiser whose Picard rounds are those of a real target (``--no-oracle`` skips it).
2. full-batch throughput: ``members=--members`` for both samplers with the U-Net (Picard evaluates
   window points x members per round, micro-batched by ``--max-batch``): members/s of each, their ratio
   and the peak GPU memory.

The U-Net's weights are random (seeded, untrained): fine for timing, but the rounds Picard needs depend on
the denoiser, and a trained network may need more (or fewer) than the untrained one, which is close to
the linear denoiser ``c_skip(sigma) x`` of white unit-variance data.  The oracle row shows the rounds on a
target with structure.  The step noise is drawn on the CPU (float64, one generator per member and step,
:mod:`sciencegen.samplers.noise`), the same for both samplers; its cost is measured separately and printed
as a floor that no sampler can beat on this machine.  That floor (about 1-2 ms per 256² field, i.e. 1-2 s per
member over 1000 steps) is why the full batch defaults to 16 members: 64 would spend minutes per run drawing
noise and leave room for a single repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import torch

#: defaults of the GPU run (the issue's sizes) and of the CPU smoke test (``--quick``)
GPU_DEFAULTS = dict(size=256, steps=1000, members=16, preset="tiny", repeats=3, max_batch=256)
QUICK_DEFAULTS = dict(size=32, steps=50, members=2, preset="tiny", repeats=1, max_batch=256)
WARM_STEPS = 40
CAVEAT = ("untrained (random, seeded) U-Net weights: timings are real, but Picard rounds depend on the "
          "denoiser and a trained network may need a different number; the GRF-oracle rows show the rounds "
          "on a target with structure")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    p.add_argument("--quick", action="store_true", help="CPU smoke-test sizes: " + str(QUICK_DEFAULTS))
    p.add_argument("--size", type=int, default=None, help="field size n (n x n, one channel); default 256")
    p.add_argument("--steps", type=int, default=None, help="steps of the reverse grid; default 1000")
    p.add_argument("--members", type=int, default=None, help="members of the full-batch run; default 16")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (median reported); default 3")
    p.add_argument("--preset", default=None, choices=["tiny", "small", "base", "large"],
                   help="U-Net size (sciencegen.models.unet_preset); default tiny")
    p.add_argument("--max-batch", type=int, default=None, help="micro-batch of one denoiser call; default 256")
    p.add_argument("--window", type=int, default=None, help="Picard window (default: the sampler's own)")
    p.add_argument("--picard", default="picard_sde", help="Picard sampler name")
    p.add_argument("--sequential", default="sequential_sde", help="sequential sampler name")
    p.add_argument("--autocast", default="none", choices=["none", "bf16"], help="bf16 autocast of the U-Net (CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile the U-Net (dynamic shapes)")
    p.add_argument("--no-oracle", action="store_true", help="skip the GRF-oracle latency rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-limit", type=float, default=420.0,
                   help="seconds from start after which no further repeat is begun (default 420)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: OMP_NUM_THREADS or 1 on cpu; torch's default on cuda)")
    p.add_argument("--json", default=None, metavar="OUT", help="write the results here")
    a = p.parse_args()
    base = QUICK_DEFAULTS if a.quick else GPU_DEFAULTS
    for k, v in base.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    return a


def import_path() -> None:
    """Let ``python benchmarks/gpu_generate.py`` run from a checkout where the package is not installed."""
    try:
        import sciencegen  # noqa: F401
    except ModuleNotFoundError:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def build_unet(a: argparse.Namespace, dev: torch.device):
    """Seeded, untrained EDM U-Net (eval mode) and the denoiser callable the samplers get."""
    from sciencegen.models.build import edm_unet

    torch.manual_seed(a.seed)
    model = edm_unet(1, preset=a.preset, periodic=(True, True)).to(dev).eval()
    params = sum(p.numel() for p in model.parameters())
    net = torch.compile(model, dynamic=True) if a.compile else model
    if a.autocast == "bf16":
        def den(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                return net(x, sigma)
    else:
        den = net
    return den, params


def noise_floor(shape: tuple[int, ...], dev: torch.device, count: int = 16) -> float:
    """Seconds to draw (and move to ``dev``) the step noise of one field, as the samplers do."""
    from sciencegen.samplers import noise

    noise.normal(0, [0], 0, shape, device=dev)
    sync(dev)
    t0 = time.perf_counter()
    noise.normal(0, list(range(count)), list(range(count)), shape, device=dev)
    sync(dev)
    return (time.perf_counter() - t0) / count


def main() -> int:
    t_start = time.perf_counter()
    a = parse()
    import_path()
    try:
        dev = torch.device(a.device)
    except RuntimeError as e:
        print(f"gpu_generate: bad --device {a.device!r}: {e}", file=sys.stderr)
        return 2
    if dev.type == "cuda" and not torch.cuda.is_available():
        print(f"gpu_generate: --device {a.device} asked but CUDA is not available (torch {torch.__version__}); "
              "use --device cpu --quick for the smoke test", file=sys.stderr)
        return 2
    if a.autocast == "bf16" and dev.type != "cuda":
        print("gpu_generate: --autocast bf16 is for CUDA only", file=sys.stderr)
        return 2
    div = {"tiny": 2, "small": 4, "base": 8, "large": 8}[a.preset]
    if a.size < 2 or a.size % div:
        print(f"gpu_generate: --size must be a multiple of {div} for preset {a.preset}", file=sys.stderr)
        return 2
    if min(a.steps, a.members, a.repeats, a.max_batch) < 1:
        print("gpu_generate: --steps, --members, --repeats and --max-batch must be >= 1", file=sys.stderr)
        return 2
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    elif dev.type == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)

    import sciencegen
    from sciencegen.models.oracle import Oracle
    from sciencegen.samplers.registry import resolve
    from sciencegen.targets import GaussianRandomField

    shape = (1, a.size, a.size)
    unet, params = build_unet(a, dev)
    dens = {"unet": unet}
    if not a.no_oracle:
        dens["grf-oracle"] = Oracle(GaussianRandomField(a.size))
    pic_opts: dict[str, Any] = {"max_batch": a.max_batch}
    if a.window is not None:
        pic_opts["window"] = a.window
    seq_opts: dict[str, Any] = {"max_batch": a.max_batch}
    try:  # unknown names / options fail here, before any timing
        window = resolve(a.picard, pic_opts)["window"]
        resolve(a.sequential, seq_opts)
    except ValueError as e:
        print(f"gpu_generate: {e}", file=sys.stderr)
        return 2

    # (case, denoiser, sampler, members): interleaved A, B within each pair
    cases = [("latency", "unet", a.sequential, 1), ("latency", "unet", a.picard, 1)]
    if not a.no_oracle:
        cases += [("latency", "grf-oracle", a.sequential, 1), ("latency", "grf-oracle", a.picard, 1)]
    cases += [("batch", "unet", a.sequential, a.members), ("batch", "unet", a.picard, a.members)]
    opts = {a.sequential: seq_opts, a.picard: pic_opts}

    def run(den: str, sampler: str, members: int, steps: int):
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        sync(dev)
        t0 = time.perf_counter()
        res = sciencegen.sample(dens[den], shape, members=members, sampler=sampler, steps=steps, seed=a.seed,
                                device=dev, dtype=torch.float32, **opts[sampler])
        sync(dev)
        dt = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
        return dt, res, peak

    if dev.type == "cuda":
        name = f"{torch.cuda.get_device_name(dev)} (CUDA {torch.version.cuda})"
    else:
        name = f"cpu {platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s)"
    print(f"device {name}, torch {torch.__version__}", flush=True)
    print(f"U-Net preset {a.preset}: {params:,} parameters (random seeded weights, untrained); field 1x{a.size}x"
          f"{a.size}; {a.steps} steps; full batch {a.members} members; max_batch {a.max_batch}; Picard window "
          f"{window}; autocast {a.autocast}; compile {a.compile}", flush=True)

    # warm-up: every case once on a short grid (CUDA context, cuDNN, allocator, compiled graphs), then one
    # denoiser call at the largest micro-batch the full-batch Picard run makes
    t0 = time.perf_counter()
    for _, den, sampler, members in cases:
        run(den, sampler, members, min(a.steps, WARM_STEPS))
    big = min(a.max_batch, a.members * int(window or a.steps))
    with torch.no_grad():
        unet(torch.randn(big, *shape, device=dev), torch.ones(big, device=dev))
    sync(dev)
    warm_s = time.perf_counter() - t0
    per_field = noise_floor(shape, dev)
    print(f"warm-up {warm_s:.1f} s; step noise drawn on the CPU: {per_field * 1e3:.2f} ms per field", flush=True)

    times: list[list[float]] = [[] for _ in cases]
    last: list[Any] = [None] * len(cases)
    peaks: list[float | None] = [None] * len(cases)
    rep_s = 0.0
    stopped_early = False
    for r in range(a.repeats):
        elapsed = time.perf_counter() - t_start
        if r and elapsed + rep_s > a.time_limit:
            stopped_early = True
            print(f"time limit: {elapsed:.0f} s elapsed, a repeat takes {rep_s:.0f} s; stopping after {r} "
                  f"repeat(s) (--time-limit {a.time_limit:.0f})", flush=True)
            break
        t_rep = time.perf_counter()
        for i, (case, den, sampler, members) in enumerate(cases):
            dt, res, peak = run(den, sampler, members, a.steps)
            times[i].append(dt)
            last[i] = res
            peaks[i] = peak if peaks[i] is None else max(peaks[i], peak)
            print(f"repeat {r}: {case:<8}{den:<11}{sampler:<16}{members:>4} members {dt:9.3f} s, rounds "
                  f"{res.stats['rounds']}", flush=True)
        rep_s = time.perf_counter() - t_rep

    rows = []
    for i, (case, den, sampler, members) in enumerate(cases):
        st = last[i].stats
        med = statistics.median(times[i])
        rows.append({"case": case, "denoiser": den, "sampler": sampler, "members": members, "median_s": med,
                     "times_s": times[i], "members_per_s": members / med, "rounds": int(st["rounds"]),
                     "nfe_per_member": float(st["nfe"]), "fallbacks": int(st["fallbacks"]),
                     "peak_gib": peaks[i]})
    # distance of each Picard result to its sequential twin (same seed, same noise): a sanity check
    for i in range(0, len(cases), 2):
        s, p = last[i].samples.double(), last[i + 1].samples.double()
        rows[i + 1]["dist_to_sequential"] = float((p - s).pow(2).mean().sqrt() / s.pow(2).mean().sqrt())

    print(f"\nmedian of {len(times[0])} repeat(s); {CAVEAT}")
    print(f"{'case':<9}{'denoiser':<12}{'sampler':<16}{'members':>8}{'median s':>10}{'members/s':>11}"
          f"{'rounds':>8}{'NFE/member':>11}{'peak GiB':>9}{'dist':>9}")
    for w in rows:
        peak = f"{w['peak_gib']:.2f}" if w["peak_gib"] is not None else "-"
        dist = f"{w['dist_to_sequential']:.1e}" if "dist_to_sequential" in w else "-"
        print(f"{w['case']:<9}{w['denoiser']:<12}{w['sampler']:<16}{w['members']:>8}{w['median_s']:>10.3f}"
              f"{w['members_per_s']:>11.3f}{w['rounds']:>8}{w['nfe_per_member']:>11.0f}{peak:>9}{dist:>9}")

    ratios = {}
    for i in range(0, len(rows), 2):
        s, p = rows[i], rows[i + 1]
        if s["case"] == "latency":
            key = f"latency_{s['denoiser']}_sequential_over_picard"
            ratios[key] = s["median_s"] / p["median_s"]
            print(f"single-member latency ({s['denoiser']}): {s['sampler']} / {p['sampler']} = "
                  f"{ratios[key]:.2f}x  (rounds {s['rounds']} vs {p['rounds']}, NFE {s['nfe_per_member']:.0f} vs "
                  f"{p['nfe_per_member']:.0f})")
        else:
            key = f"throughput_{s['denoiser']}_picard_over_sequential"
            ratios[key] = p["members_per_s"] / s["members_per_s"]
            print(f"full-batch throughput ({s['denoiser']}, {s['members']} members): {p['sampler']} / "
                  f"{s['sampler']} = {ratios[key]:.2f}x members/s  ({p['members_per_s']:.3f} vs "
                  f"{s['members_per_s']:.3f})")
    floor = {"s_per_field": per_field, "latency_s": per_field * (a.steps + 1),
             "batch_s": per_field * a.members * (a.steps + 1)}
    seq_lat, seq_bat = rows[0]["median_s"], rows[-2]["median_s"]
    print(f"noise floor (CPU draws, both samplers): {floor['latency_s']:.3g} s per single member "
          f"({100 * floor['latency_s'] / seq_lat:.0f}% of sequential latency), {floor['batch_s']:.3g} s for the "
          f"full batch ({100 * floor['batch_s'] / seq_bat:.0f}% of sequential; <= "
          f"{a.members / floor['batch_s']:.4g} members/s)")
    total = time.perf_counter() - t_start
    print(f"total {total:.0f} s" + (" (stopped early by --time-limit)" if stopped_early else ""))

    if a.json:
        out = {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
               "tf32_conv": torch.backends.cudnn.allow_tf32, "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
               "threads": torch.get_num_threads(), "params": params,
               "config": {k: getattr(a, k) for k in ("size", "steps", "members", "repeats", "preset", "max_batch",
                                                      "picard", "sequential", "autocast", "compile", "seed",
                                                      "time_limit", "quick")},
               "window": window, "repeats_done": len(times[0]), "warmup_s": warm_s, "total_s": total,
               "rows": rows, "ratios": ratios, "noise_floor": floor, "caveat": CAVEAT}
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"json: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
