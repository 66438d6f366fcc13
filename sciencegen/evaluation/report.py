"""What the evaluation tells: the content of ``metrics.json``, ``report.md`` and the terminal summary.

:func:`build_result` assembles ``metrics.json`` (plain JSON via :func:`~sciencegen.evaluation.outputs.jsonable`);
:func:`report_markdown` and :func:`format_summary` render that same result, so the report, the summary and the
file never disagree. :func:`start_line` is the line logged when the computation starts.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from .common import TASK_BYTES, Side, command_line, dims_text, fmt
from .metrics import W1_BINS

__all__ = ["FIGURE_CAPTIONS", "build_result", "figure_title", "format_summary", "memorisation_line",
           "not_computed_lines", "report_markdown", "start_line", "unit_label"]

#: the evaluation figures and their captions in ``report.md``
FIGURE_CAPTIONS = {"samples.png": "Generated fields (top) next to reference fields (bottom), shared colour scale",
                   "spectrum.png": "Isotropic power spectrum",
                   "histogram.png": "One-point value distribution",
                   "correlation.png": "Two-point correlation"}




def build_result(dataset: dict[str, Any], samples: Side, ref: Side, metrics: dict[str, Any], cost: dict[str, Any],
                 warn: list[str], sched: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The content of ``metrics.json`` (before ``seconds``, ``figures`` and ``output``).

    Parameters
    ----------
    dataset
        The plain dataset config.
    samples, ref
        The two sides.
    metrics
        Per-variable metrics (:func:`~sciencegen.evaluation.metrics.variable_metrics`).
    cost
        Mean sampler cost per member (:func:`~sciencegen.evaluation.samples.sample_cost`).
    warn
        Notes for the report and the summary.
    sched
        What the computation ran on.
    settings
        ``bins`` and ``max_lag`` of the run (the fixed ``w1_bins`` and ``task_bytes`` are added).
    """
    from .. import __version__

    v0 = next(iter(samples.data))
    geo = samples.extras.get("geometry")
    grid = {"field_dims": list(ref.field_dims), "shape": [int(samples.data[v0].sizes[d]) for d in ref.field_dims]}
    if geo is not None and geo.latlon:  # a plane grid is recorded as it always was
        grid |= {"kind": geo.kind, "description": geo.describe(), "lat_dim": str(geo.lat_dim),
                 "lon_dim": str(geo.lon_dim), "lon_periodic": geo.lon_periodic}
    result = {
        "version": __version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command_line(),
        "dataset": dataset,
        "samples": samples.info,
        "reference": {**{k: x for k, x in ref.info.items() if k != "warning"}, "label": ref.label},
        "grid": grid,
        "variables": metrics,
        "cost": cost,
        "warnings": warn,
        "scheduler": sched,
        "settings": {**settings, "w1_bins": W1_BINS, "task_bytes": TASK_BYTES},
    }
    if "memorisation" in samples.extras:
        result["memorisation"] = samples.extras["memorisation"]
    return result


def unit_label(v: str, units: str | None) -> str:
    """``sst [K]``, or ``sst (units unknown)`` when the variable has no units (never ``[1]`` invented)."""
    return f"{v} [{units}]" if units else f"{v} (units unknown)"


def not_computed_lines(result: Mapping[str, Any]) -> list[str]:
    """One line per metric that could not be computed, with its reason, and per masked variable its valid points."""
    lines = []
    for v, m in result["variables"].items():
        if m.get("valid_points"):
            lines.append(f"{v}: {m['valid_points']['text']}; every metric uses the valid points only")
        for metric, why in (m.get("not_computed") or {}).items():
            lines.append(f"{v}: {metric.replace('_', ' ')}: not computed: {why}")
    return lines


def memorisation_line(result: Mapping[str, Any]) -> str | None:
    """The memorisation check in one sentence (``None`` when the result has none)."""
    mem = result.get("memorisation")
    if not mem:
        return None
    if not mem.get("computed"):
        return f"memorisation: not checked: {mem.get('reason')}"
    mm, mh = mem["members"], mem["heldout"]
    capped = (f" (of {mem['training_samples']}, evenly spread)" if mem["training_compared"] < mem["training_samples"]
              else "")
    return (f"memorisation: {mem['verdict']}. Distance to the nearest of {mem['training_compared']} training "
            f"samples{capped} ({mem['distance']}): generated median {fmt(mm['q50'], '.3g')} "
            f"(1% {fmt(mm['q01'], '.3g')}), "
            f"held-out median {fmt(mh['q50'], '.3g')} (1% {fmt(mh['q01'], '.3g')}); {mem['flagged']} of "
            f"{mem['members_compared']} members nearer than the held-out 1% quantile, {mem['copies']} copies "
            f"(relative distance < 1e-3)")


def start_line(samples: Side, ref: Side, variables: Sequence[str], sched: str) -> str:
    """``sciencegen-evaluate: 32 complete members of STORE (y=16, x=16, variables field) against ...``."""
    s = samples.info
    skipped = [f"{s['incomplete']} of {s['members']} members incomplete"] if s["incomplete"] else []
    skipped += [f"{s['unreadable']} unreadable"] if s["unreadable"] else []
    sizes = samples.data[variables[0]].sizes
    return (f"sciencegen-evaluate: {samples.count} complete members of {s['path']} "
            f"({dims_text(ref.field_dims, sizes)}, variables {', '.join(variables)}) against the "
            f"{ref.info.get('source', ref.kind)} reference ({ref.count} samples); {sched}"
            + (f"; {', '.join(skipped)}: excluded" if skipped else ""))


def figure_title(result: Mapping[str, Any], ref_label: str) -> str:
    """The title of every figure: dataset, grid, model, sampler and reference."""
    s = result["samples"]
    return (f"{result['dataset'].get('name')} {'x'.join(map(str, result['grid']['shape']))}: generated "
            f"({s.get('model') or '?'}, {s.get('sampler') or '?'} {s.get('sampler_steps') or '?'} steps) "
            f"vs {ref_label}")


# --------------------------------------------------------------------------------------------- report.md


def _data_section(result: Mapping[str, Any]) -> list[str]:
    s, ref = result["samples"], result["reference"]
    lines = [f"# Evaluation of {s['path']}", ""]
    lines.append(f"{result['created']} · sciencegen {result['version']} · {result['seconds']:.1f} s · "
                 f"{result['scheduler']}")
    lines += ["", "## Data", ""]
    excluded = ([f"{s['incomplete']} incomplete"] if s["incomplete"] else []) + (
        [f"{s['unreadable']} complete but unreadable"] if s.get("unreadable") else [])
    lines.append(f"* **samples**: `{s['path']}` — {s.get('evaluated', s['complete'])} of {s['members']} members "
                 "evaluated" + (f" ({', '.join(excluded)}: excluded)" if excluded else "")
                 + f"; model {s.get('model') or '?'}, sampler {s.get('sampler') or '?'} "
                 f"({s.get('sampler_steps') or '?'} steps), seed {s.get('seed')}")
    lines.append(f"* **reference** ({ref['source']}): {ref['description']}")
    lines.append(f"* **dataset**: {result['dataset'].get('name')} — grid "
                 + ", ".join(f"{d}={n}" for d, n in zip(result["grid"]["field_dims"], result["grid"]["shape"],
                                                       strict=True)))
    if result["grid"].get("description"):
        lines.append(f"* **grid**: {result['grid']['description']}")
    if result.get("command"):
        lines.append(f"* **command**: `{result['command']}`")
    for w in result.get("warnings", []):
        lines.append(f"* **note**: {w}")
    for line in not_computed_lines(result):
        lines.append(f"* **valid points / not computed**: {line}")
    mem = memorisation_line(result)
    if mem:
        lines.append(f"* **{mem.split(':', 1)[0]}**:{mem.split(':', 1)[1]}")
    return lines


def _numbers_section(result: Mapping[str, Any]) -> list[str]:
    exact = result["reference"]["source"] == "exact"
    lines = ["", "## Key numbers", ""]
    head = ["variable", "spectral error", "W1", "W1 / std", "mean (gen / ref)", "std (gen / ref)",
            "skewness (gen / ref)", "excess kurtosis (gen / ref)", "max ΔC(r)"]
    if exact:
        head[2:2] = ["project spectral_error", "noise floor"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for v, m in result["variables"].items():
        ms, mr = m["moments"]["sample"], m["moments"]["reference"]
        mx = m["moments"].get("exact", mr)
        nc = m.get("not_computed") or {}
        row = [unit_label(v, m["units"]),
               "not computed (see notes)" if "spectral_error" in nc else fmt(m["spectral_error"])]
        if exact:
            row += [fmt(m.get("spectral_error_all_shells")), fmt(m.get("spectral_error_floor"))]
        row += [fmt(m["w1"]), fmt(m["w1_normalised"])]
        row += [f"{fmt(ms[q])} / {fmt(mx[q])}" for q in ("mean", "std", "skewness", "kurtosis")]
        row.append("not computed (see notes)" if "correlation" in nc else fmt(m["correlation"]["max_abs_diff"]))
        lines.append("| " + " | ".join(row) + " |")
    c = result["cost"]
    lines += ["", f"Sampler cost: {fmt(c['rounds_mean'], '.1f')} sequential rounds and {fmt(c['nfe_mean'], '.1f')}"
              " denoiser evaluations (NFE) per member (means over the complete members).", ""]
    return lines


def _geo_definitions(result: Mapping[str, Any]) -> str:
    """The definitions of the metrics on a latitude-longitude grid or with masks."""
    latlon = result["grid"].get("kind") == "latlon"
    spectrum = ("*spectral error* = mean over the zonal wavenumbers m >= 1 of |log(P_gen(m) / P_ref(m))|, P the "
                "zonal power spectrum (FFT along longitude of each complete latitude row, cos(latitude)-weighted "
                "mean over the rows; a regional longitude box is Hann-windowed)" if latlon else
                "*spectral error* = mean over the wavenumbers m >= 1 of |log(P_gen(m) / P_ref(m))|, P the power "
                "spectrum along the last field dim over its complete rows (Hann-windowed)")
    weights = "cos(latitude)-weighted " if latlon else ""
    corr = ("great-circle distance in km" if latlon else "separation in grid points")
    return (f"Definitions (docs/evaluate.md): every metric uses the valid points only; {spectrum}; *W1* = "
            f"Wasserstein-1 distance of the {weights}one-point value distributions (normalised by the reference "
            f"std); moments are {weights or 'equally weighted '}moments; *max ΔC(r)* = largest absolute difference "
            f"of the two-point correlation curves against {corr} (masked estimator sum w w' a a' / sum w w').")


def _definitions(result: Mapping[str, Any]) -> str:
    ref = result["reference"]
    exact = ref["source"] == "exact"
    if result["grid"].get("kind") == "latlon" or any("not_computed" in m for m in result["variables"].values()):
        return _geo_definitions(result)
    k1, k2 = next(iter(result["variables"].values()))["spectral_shells"]
    return (f"Definitions (docs/evaluate.md): *spectral error* = mean over the complete shells k = {k1}..{k2} "
            "of |log(P_gen(k) / P_ref(k))|, P the isotropic power per mode (orthonormal DFT); "
            + ("*project spectral_error* = `sciencegen.targets.spectral_error` (every non-empty shell, k = 0 "
               f"and the corners included); *noise floor* = the spectral error of the {ref['samples']} exact "
               "reference samples, i.e. what a perfect sampler scores with that many members; " if exact else "")
            + "*W1* = Wasserstein-1 distance of the one-point value distributions ("
            + ("normalised by the exact std" if exact else "normalised by the reference std")
            + "); *max ΔC(r)* = largest absolute difference of the two-point correlation curves.")


def report_markdown(result: Mapping[str, Any], figures: Sequence[str]) -> str:
    """The text of ``report.md``: the data, the key numbers, their definitions and the figures.

    Parameters
    ----------
    result
        The content of ``metrics.json`` (plain JSON types, with ``seconds``).
    figures
        The figure files written beside the report (names relative to it).
    """
    lines = _data_section(result) + _numbers_section(result) + [_definitions(result)]
    if figures:
        lines += ["", "## Figures", ""]
        kinds = {m.get("spectrum", {}).get("kind") for m in result["variables"].values()} - {None}
        for f in figures:
            caption = FIGURE_CAPTIONS.get(f, f)
            if f == "spectrum.png" and kinds:  # a zonal (latitude-longitude) or row (masked plane) spectrum
                caption = ("Zonal power spectrum (FFT along longitude of the complete latitude rows, "
                           "cos(latitude)-weighted)" if "zonal" in kinds else
                           "Power spectrum along the last field dim (complete rows)")
            lines += [f"![{caption}]({f})", "", f"*{caption}.*", ""]
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------------------------- terminal


def _variable_summary(v: str, m: Mapping[str, Any]) -> list[str]:
    ms = m["moments"]["sample"]
    mr = m["moments"].get("exact", m["moments"]["reference"])
    extra = ""
    if "spectral_error_all_shells" in m:
        extra = f" (project spectral_error {fmt(m['spectral_error_all_shells'], '.4f')}"
        extra += f", noise floor {fmt(m.get('spectral_error_floor'), '.4f')})"
    elif "spectral_error_floor" in m:
        extra = f" (noise floor {fmt(m.get('spectral_error_floor'), '.4f')})"
    dc = fmt(m["correlation"]["max_abs_diff"], ".3g")
    nc = m.get("not_computed") or {}
    if "spectral_error" in nc:
        extra += " (not computed, see notes)"
    if "correlation" in nc:
        dc += " (not computed, see notes)"
    pairs = ", ".join(f"{q} {fmt(ms[q], '.4g')} / {fmt(mr[q], '.4g')}"
                      for q in ("mean", "std", "skewness", "kurtosis"))
    return [f"  {v}: spectral error {fmt(m['spectral_error'], '.4f')}{extra}, W1 {fmt(m['w1'], '.4g')} "
            f"({fmt(m['w1_normalised'], '.3g')} std), max dC(r) {dc}",
            f"      {pairs} (generated / reference)"]


def format_summary(result: Mapping[str, Any]) -> str:
    """The terminal summary of :func:`~sciencegen.pipelines.evaluate.run_evaluate`'s result (several lines).

    Parameters
    ----------
    result
        The content of ``metrics.json`` with ``output`` (the paths written).
    """
    s, ref = result["samples"], result["reference"]
    lines = [f"evaluated {s.get('evaluated', s['complete'])} members of {s['path']} against the {ref['source']} "
             f"reference ({ref['samples']} samples) in {result['seconds']:.1f} s"]
    for w in result.get("warnings", []) + not_computed_lines(result):
        lines.append(f"  note: {w}")
    for v, m in result["variables"].items():
        lines += _variable_summary(v, m)
    mem = memorisation_line(result)
    if mem:
        lines.append(f"  {mem}")
    c = result["cost"]
    if c["nfe_mean"] is not None:
        lines.append(f"  cost: {fmt(c['rounds_mean'], '.1f')} rounds, {fmt(c['nfe_mean'], '.1f')} NFE per member")
    out = result["output"]
    lines.append(f"  wrote {out['metrics']}, {out['report']}" + (f" and {len(out['figures'])} figures"
                                                                if out["figures"] else ""))
    return "\n".join(lines)
