"""What the evaluation of a conditional store tells: ``metrics.json``, ``report.md`` and the terminal summary.

:func:`conditional_result` assembles ``metrics.json`` (its ``conditional`` section: per variable, per lead time,
per method); :func:`conditional_markdown` and :func:`conditional_summary` render that same result.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from .common import TASK_BYTES, command_line, fmt

__all__ = ["CONDITIONAL_CAPTIONS", "beaten_sentence", "conditional_markdown", "conditional_result",
           "conditional_summary", "observed_lines"]

#: the figures of a conditional evaluation and their captions in ``report.md``
CONDITIONAL_CAPTIONS = {
    "scores.png": "CRPS and corrected spread/skill of the generated ensemble and the baselines against lead time",
    "ranks.png": "Rank histograms of the truth among the members (pooled over points and cases)",
    "conditions.png": "Input, truth, members and ensemble mean for a few cases",
    "spectra.png": "Isotropic spectra of the members and the truths, and their ratio",
    "observed_": "Truth, observations, member mean and std, exact posterior mean and std (where known) of",
}

#: the baselines a model is compared with in the report's sentence
BASELINES = ("climatology", "persistence", "nearest", "bicubic")




def conditional_result(dataset: Mapping[str, Any], samples: dict[str, Any], section: dict[str, Any],
                       cost: dict[str, Any], warn: list[str], sched: str) -> dict[str, Any]:
    """The content of ``metrics.json`` for a conditional store (before ``seconds``, ``figures``, ``output``).

    Parameters
    ----------
    dataset
        The plain dataset config.
    samples
        What the store holds (path, conditions, members, evaluated and excluded conditions, model, sampler, ...).
    section
        The ``conditional`` section: ``conditions``, ``members``, ``lead_times``, ``methods`` and ``variables``.
    cost, warn, sched
        Mean sampler cost, notes, what the computation ran on.
    """
    from .. import __version__

    return {"version": __version__,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": command_line(), "dataset": dict(dataset), "samples": samples,
            "reference": {"source": "truth", "label": "truth", "samples": samples["evaluated_conditions"],
                          "description": "the truths stored with the conditions (truth_<variable>)"},
            "grid": section.pop("grid"), "conditional": section, "cost": cost, "warnings": warn,
            "scheduler": sched, "settings": {"task_bytes": TASK_BYTES}}


def _lead_label(lead: Any) -> str:
    return "—" if lead is None else str(lead)


def beaten_sentence(v: str, leads: Sequence[Mapping[str, Any]]) -> str:
    """Which baselines the generated ensemble beats (lower CRPS), at which lead times, and how far it is from the
    exact posterior."""
    parts = []
    scored = [e for e in leads if "model" in e["methods"]]
    for b in BASELINES:
        have = [e for e in scored if b in e["methods"]]
        if not have:
            continue
        won = [e for e in have if e["methods"]["model"]["crps"] < e["methods"][b]["crps"]]
        if len(won) == len(have):
            parts.append(f"beats {b}" + (" at every lead time" if len(have) > 1 else ""))
        elif not won:
            parts.append(f"does not beat {b}")
        else:
            parts.append(f"beats {b} at lead times {', '.join(_lead_label(e['lead_time']) for e in won)} only")
    text = f"**{v}**: the generated ensemble " + ("; ".join(parts) if parts else "has no baseline to beat")
    ratios = [e["methods"]["model"]["crps"] / e["methods"]["exact"]["crps"] - 1 for e in scored
              if "exact" in e["methods"] and e["methods"]["exact"]["crps"]]
    if ratios:
        r = max(ratios, key=abs)
        text += (f"; its CRPS is {100 * abs(r):.1f} % {'above' if r > 0 else 'below'} the exact posterior's"
                 + (" (the largest difference over lead times)" if len(ratios) > 1 else ""))
    return text + " (CRPS, lower is better)."


def _u(units: str) -> str:
    """`` [K]`` after a score's name, or `` (units unknown)``: never an invented ``[1]``."""
    return f" [{units}]" if units else " (units unknown)"


def _spec_cell(m: Mapping[str, Any]) -> str:
    why = (m.get("not_computed") or {}).get("spectral_error")
    return f"not computed: {why}" if why else fmt(m["spectral_error"], ".3f")


def _table(entry: Mapping[str, Any], units: str) -> list[str]:
    head = ["method", "members", f"CRPS{_u(units)}", f"RMSE{_u(units)}", "spread/skill",
            "rank χ² p", "spectral error"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in entry["methods"].items():
        chi = (m.get("rank") or {}).get("chi2") or {}
        p = chi.get("p_value")
        p_text = "—" if p is None else f"{p:.3g} (χ² {chi['statistic']:.1f}, {chi['dof']} dof)"
        crps = fmt(m["crps"]) + ("" if m["members"] >= 2 else " (MAE)")
        lines.append(f"| {name} | {m['members']} | {crps} | {fmt(m['rmse'])} | {fmt(m['spread_skill'], '.3f')} | "
                     f"{p_text} | {_spec_cell(m)} |")
    return lines


def _data_lines(result: Mapping[str, Any]) -> list[str]:
    s, c = result["samples"], result["conditional"]
    leads = c["lead_times"]
    lines = [f"# Evaluation of {s['path']} (conditional ensemble)", "",
             f"{result['created']} · sciencegen {result['version']} · {result['seconds']:.1f} s · "
             f"{result['scheduler']}", "", "## Data", ""]
    of = "" if s["evaluated_conditions"] == s["conditions"] else f" (of the store's {s['conditions']} conditions)"
    lines.append(f"* **evaluated**: {s['evaluated_conditions']} conditions × {s['members']} members{of}"
                 + (f", {len(leads)} lead times ({leads[0]}..{leads[-1]})" if leads else "")
                 + f"; model {s.get('model') or '?'}, sampler {s.get('sampler') or '?'} "
                 f"({s.get('sampler_steps') or '?'} steps), seed {s.get('seed')}")
    excluded = [f"{s['incomplete_conditions']} with incomplete members"] if s["incomplete_conditions"] else []
    excluded += [f"{s['unreadable_conditions']} unreadable"] if s["unreadable_conditions"] else []
    if excluded:
        lines.append(f"* **excluded conditions**: {', '.join(excluded)}")
    unknown = {v: max(e["unknown_truth"] for e in m["leads"]) for v, m in c["variables"].items()}
    lines.append("* **conditions without truth** (NaN truth: excluded): "
                 + ", ".join(f"{v}: {n}" + (" at some lead time" if leads and n else "") for v, n in unknown.items()))
    lines.append(f"* **conditions from**: {c.get('source') or '?'}; kinds: {', '.join(c.get('kinds') or []) or '?'}")
    for name, desc in c["methods"].items():
        lines.append(f"* **{name}**: {desc}")
    if result.get("command"):
        lines.append(f"* **command**: `{result['command']}`")
    for w in result.get("warnings", []):
        lines.append(f"* **note**: {w}")
    return lines


def conditional_markdown(result: Mapping[str, Any], figures: Sequence[str]) -> str:
    """The text of ``report.md`` for a conditional store: the data, a table per variable (and lead time), which
    baselines are beaten, the definitions and the figures."""
    lines = _data_lines(result) + ["", "## Scores", ""]
    for v, m in result["conditional"]["variables"].items():
        lines += [beaten_sentence(v, m["leads"]), ""]
        for e in m["leads"]:
            title = f"### {v}" + ("" if e["lead_time"] is None else f", lead time {e['lead_time']}")
            lines += [title, "", f"{e['conditions']} cases with a known truth"
                      + (f" ({e['unknown_truth']} without: excluded)" if e["unknown_truth"] else "") + ".", ""]
            lines += _table(e, m["units"]) + [""]
        lines += [f"Rank χ² test on points thinned to every {m['rank_stride']} grid points per field dim (the "
                  "generated members' deviations from their ensemble mean decorrelate to "
                  f"{m['decorrelation']['threshold']} at that separation); ranks pooled into groups of expected "
                  "count ≥ 5.", ""]
    lines.append("Definitions (docs/evaluate.md): *CRPS* = fair CRPS (Ferro 2014) of the ensemble, mean over points "
                 "and cases (one member: the absolute error); *RMSE* of the ensemble mean; *spread/skill* = "
                 "sqrt((M+1)/M) · spread / RMSE, 1 for a calibrated ensemble; *rank χ² p* = p-value of the "
                 "chi-squared test that the rank histogram is flat; *spectral error* = mean over the complete shells "
                 "of |log(P_members(k) / P_truth(k))|.")
    if result.get("observed"):
        lines += ["", *observed_lines(result["observed"])]
    if figures:
        lines += ["", "## Figures", ""]
        for f in figures:
            caption = CONDITIONAL_CAPTIONS.get(f, f)
            if f.startswith("observed_"):
                caption = f"{CONDITIONAL_CAPTIONS['observed_']} {f[len('observed_'):-len('.png')]} for a few cases"
            lines += [f"![{caption}]({f})", "", f"*{caption}.*", ""]
    return "\n".join(lines).rstrip() + "\n"


def _obs_table(scores: Mapping[str, Any], units: str) -> list[str]:
    head = ["method", "points", f"CRPS{_u(units)}", f"RMSE{_u(units)}", "spread/skill"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, per in scores.items():
        for subset, m in per.items():
            kind = "" if m["crps_kind"] != "absolute error" else " (MAE)"
            lines.append(f"| {name}, {subset} | {m['points']} | {fmt(m['crps'])}{kind} | {fmt(m['rmse'])} | "
                         f"{fmt(m['spread_skill'], '.3f')} |")
    return lines


def observed_lines(obs: Mapping[str, Any]) -> list[str]:
    """The report's section on an observation store: per variable the scores at observed and unobserved points,
    the χ² of the members, the truth and the exact posterior, the ratio to the exact posterior's CRPS."""
    settings = obs.get("settings") or {}
    noise = settings.get("noise", "?")
    noise = ", ".join(f"{k} {x}" for k, x in noise.items()) if isinstance(noise, Mapping) else noise
    lines = ["## Observations", "",
             f"{obs['cases']} cases observed by `{obs.get('kind') or '?'}` observations (likelihood "
             f"{settings.get('likelihood', '?')}, noise {noise}); observed points = the "
             "support of the observations (weight > 0), unobserved = the rest.", ""]
    lines += [f"* **{k}**: {d}" for k, d in obs["methods"].items()] + [f"* **note**: {n}" for n in obs["notes"]]
    for v, m in obs["variables"].items():
        c = m["chi2"]
        lines += ["", f"### {v} (observations)", "",
                  f"{m['cases']} cases ({m['cases_with_truth']} with a known truth), "
                  f"{fmt(m['observations_per_case'], '.4g')} observations per case, "
                  f"{100 * m['observed_fraction']:.1f} % of the points observed.", ""]
        if m["skipped"]:
            lines += [f"Not scored: {m['skipped']}.", ""]
        else:
            lines += _obs_table(m["scores"], m["units"]) + [""]
        if m["crps_ratio_unobserved"] is not None:
            lines += [f"CRPS at unobserved points: generated / exact posterior = {m['crps_ratio_unobserved']:.3f}.", ""]
        lines.append(f"χ² = mean over observations of ((y − H x)/s)²: members {fmt(c['members'], '.3f')} ± "
                     f"{fmt(c['members_se'], '.2g')}, truth {fmt(c['truth'], '.3f')} (expected 1), exact posterior "
                     f"sample {fmt(c['exact_expected'], '.3f')} (its expectation given y)"
                     f"{'; ' + c['note'] if c['note'] else ''}.")
        lines += [f"* **baseline**: {n}" for n in m["baseline_notes"]]
    return lines


def conditional_summary(result: Mapping[str, Any]) -> str:
    """The terminal summary of a conditional evaluation (several lines)."""
    s, c = result["samples"], result["conditional"]
    lines = [f"evaluated {s['evaluated_conditions']} conditions × {s['members']} members of {s['path']} against "
             f"the truth in {result['seconds']:.1f} s"]
    lines += [f"  note: {w}" for w in result.get("warnings", [])]
    for v, m in c["variables"].items():
        for e in m["leads"]:
            where = "" if e["lead_time"] is None else f" lead {e['lead_time']}"
            row = ", ".join(f"{k} {fmt(x['crps'], '.4g')}" for k, x in e["methods"].items())
            model = e["methods"].get("model")
            ss = f"; spread/skill {fmt(model['spread_skill'], '.3f')}" if model else ""
            p = ((model or {}).get("rank") or {}).get("chi2", {}).get("p_value") if model else None
            lines.append(f"  {v}{where}: CRPS {row}{ss}" + (f", rank χ² p {p:.3g}" if p is not None else ""))
    for v, m in (result.get("observed") or {}).get("variables", {}).items():
        u = (m["scores"].get("model") or {}).get("unobserved") or {}
        ratio = m["crps_ratio_unobserved"]
        lines.append(f"  {v} observed: unobserved CRPS {fmt(u.get('crps'), '.4g')}, RMSE {fmt(u.get('rmse'), '.4g')}"
                     + (f" ({ratio:.3f} x exact)" if ratio is not None else "")
                     + f"; χ² members {fmt(m['chi2']['members'], '.3f')}, truth {fmt(m['chi2']['truth'], '.3f')}")
    out = result["output"]
    lines.append(f"  wrote {out['metrics']}, {out['report']}" + (f" and {len(out['figures'])} figures"
                                                                if out["figures"] else ""))
    return "\n".join(lines)
