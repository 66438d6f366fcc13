"""The evaluation of a conditional ensemble store, in order: the store, the methods, one Dask pass, the outputs.

:func:`evaluate_conditional` is what ``sciencegen-evaluate`` runs when ``samples.path`` has a ``condition`` dim
(:func:`~sciencegen.evaluation.cond_store.is_conditional`): the truth is in the store, so ``reference.*`` is not
used. The dataset config that matters (for the exact conditional law and the periodicity of the field dims) is
the one the store records (``sciencegen_ensemble`` identity), else the command's ``dataset``. An observation
store (root attribute ``sciencegen_observations``) is also scored by :mod:`~sciencegen.evaluation.observed`
(scores at observed and unobserved points, χ², the exact posterior) in the same Dask pass.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..analysis.conditional_figures import (
    plot_condition_panels,
    plot_conditional_spectra,
    plot_rank_histograms,
    plot_scores,
)
from ..analysis.observed_figures import plot_observed
from . import outputs
from .baselines import Method, baseline_methods, exact_law_of, exact_method, law_fits, model_method
from .common import first_line
from .cond_store import CondStore, open_conditional
from .conditional import lead_scores, variable_scores
from .conditional_report import conditional_markdown, conditional_result, conditional_summary
from .metrics import scheduler
from .observed import is_observed, plan_observed
from .options import Options
from .references import dataset_hint
from .samples import Ensemble

__all__ = ["CONDITIONAL_FIGURES", "evaluate_conditional", "field_periodicity", "law_dataset"]

log = logging.getLogger(__name__)

#: the figures of a conditional evaluation (``evaluate.figures=true``)
CONDITIONAL_FIGURES = ("scores.png", "ranks.png", "conditions.png", "spectra.png")


def law_dataset(dataset: Mapping[str, Any], ens: Ensemble) -> tuple[dict[str, Any], str | None]:
    """The dataset config of the store (its recorded identity, else ``dataset``), with the store's conditioning
    kinds, and a note when it differs from the command's ``dataset``."""
    from ..data.prepare import dataset_identity

    recorded = ens.identity.get("dataset")
    conf = dict(recorded) if isinstance(recorded, Mapping) and recorded.get("_target_") else dict(dataset)
    _, note = dataset_hint(recorded if isinstance(recorded, Mapping) else None, dataset_identity(dataset))
    text = ens.ds.attrs.get("sciencegen_conditioning")
    try:
        kinds = (json.loads(text) if isinstance(text, str) else {}).get("kinds")
    except ValueError:
        kinds = None
    if kinds and not conf.get("conditioning"):
        conf["conditioning"] = kinds
    return conf, note


def field_periodicity(dataset: Mapping[str, Any], ens: Ensemble, field_dims: tuple[str, ...]) -> dict[str, bool]:
    """Per field dim: periodic. From the conditioning attribute's ``periodic`` if recorded, else the dataset's
    field spec (generated datasets are periodic), else a longitude spanning 360 degrees."""
    from ..data.fields import detect_periodic
    from ..data.prepare import make_source

    text = ens.ds.attrs.get("sciencegen_conditioning")
    try:
        recorded = (json.loads(text) if isinstance(text, str) else {}).get("periodic")
    except ValueError:
        recorded = None
    if isinstance(recorded, Mapping):
        return {d: bool(recorded.get(d, False)) for d in field_dims}
    try:
        _, spec, _ = make_source(dataset).open()
        if set(field_dims) <= set(spec.field_dims):
            return {d: bool(spec.periodic.get(d, False)) for d in field_dims}
    except Exception as exc:  # the dataset cannot be opened here: fall back on the coordinates
        log.debug("periodicity from the coordinates: %s", first_line(exc))
    return {d: detect_periodic(ens.ds, d) for d in field_dims}


def _panel_input(store: CondStore, v: str) -> str | None:
    """The per-sample input shown beside ``v``: the one of ``v`` (state, coarse) if any, else the first."""
    entries = store.conditioning.get("inputs") or {}
    own = [n for n in store.inputs if (entries.get(n) or {}).get("variable") == v]
    return (own or list(store.inputs) or [None])[0]


def _lazy_panels(store: CondStore, count: int) -> dict[str, Any]:
    """For the first ``count`` cases with a known truth at the first lead: inputs, truths, 3 members, the mean."""
    out = {}
    for v in store.variables:
        cases = np.flatnonzero(store.known(v, 0))[:count]
        if not cases.size:
            continue
        da = store.forecast(v, 0, cases)
        name = _panel_input(store, v)
        out[v] = {"cases": cases.tolist(), "input_name": name,
                  "input": None if name is None else store.inputs[name][cases],
                  "truth": store.truth[v][cases, 0], "members": da.isel(member=slice(0, 3)).data,
                  "mean": da.mean("member").data, "count": store.members, "lead_time": store.leads[0],
                  "coords": {d: store.ds[d] if d in store.ds.coords else None for d in store.field_dims}}
    return out


def _methods(store: CondStore, dataset: Mapping[str, Any], notes: list[str]) -> dict[str, list[Method]]:
    """Per variable: the generated members, the exact posterior (where the dataset has a law), the baselines."""
    law, note = exact_law_of(dataset)
    if law is not None:
        note = law_fits(law, store)
        law = None if note else law
    if note:
        notes.append(note)
    cache: dict[int, Any] = {}
    return {v: [model_method(store, v)] + ([exact_method(law, store, v, cache)] if law is not None else [])
            + baseline_methods(store, v) for v in store.variables}


def _samples_info(ens: Ensemble, store: CondStore) -> dict[str, Any]:
    identity, attrs = ens.identity, ens.ds.attrs
    model = identity.get("model")
    model_text = f"{model.get('name', '?')}" + (f" (step {model['step']})" if "step" in model else "") \
        if isinstance(model, Mapping) else attrs.get("model")
    full = store.complete.all(axis=1)
    return {"path": str(store.path), "conditions": store.conditions, "members": store.members,
            "evaluated_conditions": int(store.evaluated.sum()), "incomplete_conditions": int((~full).sum()),
            "unreadable_conditions": int(store.unreadable.sum()), "model": model_text,
            "sampler": attrs.get("sampler", (identity.get("sampler") or {}).get("name")),
            "sampler_steps": attrs.get("sampler_steps", (identity.get("sampler") or {}).get("steps")),
            "seed": identity.get("seed", attrs.get("seed")), "dataset": identity.get("dataset"),
            "written_by_sciencegen": ens.meta is not None}


def _cost(ens: Ensemble, store: CondStore) -> dict[str, Any]:
    cost: dict[str, Any] = {"rounds_mean": None, "nfe_mean": None}
    for key in ("rounds", "nfe"):
        if key in ens.ds.data_vars:
            try:
                cost[f"{key}_mean"] = float(np.asarray(ens.ds[key].values, dtype=np.float64)[store.evaluated].mean())
            except Exception:  # a corrupt cost chunk: the cost is not reported
                cost[f"{key}_mean"] = None
    return cost


def _section(store: CondStore, methods: dict[str, list[Method]], variables: dict[str, Any]) -> dict[str, Any]:
    cond = store.conditioning
    described = {m.name: m.description for ms in methods.values() for m in ms}
    return {"conditions": store.conditions, "members": store.members, "evaluated": int(store.evaluated.sum()),
            "lead_times": None if store.leads == [None] else store.leads, "source": cond.get("source"),
            "holdout": cond.get("holdout"), "kinds": list(cond.get("kinds") or {}), "inputs": list(store.inputs),
            "static": list(store.statics), "periodic": store.periodic, "methods": described, "variables": variables,
            "grid": {"field_dims": list(store.field_dims), "shape": list(store.field_shape)}}


def _figures(result: Mapping[str, Any], shown: dict[str, Any]) -> dict[str, outputs.Writer]:
    s, c = result["samples"], result["conditional"]
    title = (f"{result['dataset'].get('name')} {'x'.join(map(str, result['grid']['shape']))}: {s.get('model') or '?'}, "
             f"{s.get('sampler') or '?'}; {s['evaluated_conditions']} conditions x {s['members']} members")
    units = {v: m["units"] for v, m in c["variables"].items()}
    writers: dict[str, outputs.Writer] = {
        "scores.png": lambda p: plot_scores(p, c["variables"], title),
        "ranks.png": lambda p: plot_rank_histograms(p, c["variables"], title),
        "conditions.png": lambda p: plot_condition_panels(p, shown, units, title),
        "spectra.png": lambda p: plot_conditional_spectra(p, c["variables"], title)}
    if not shown:
        del writers["conditions.png"]
    return writers


def _observed_figures(result: Mapping[str, Any], panels: dict[str, Any]) -> dict[str, outputs.Writer]:
    """``observed_<var>.png`` per variable of an observation store."""
    s, obs = result["samples"], result["observed"]
    title = (f"{s.get('model') or '?'}, {s.get('sampler') or '?'}: observations {obs.get('kind') or '?'}, "
             f"{s['evaluated_conditions']} cases x {s['members']} members")
    return {f"observed_{v}.png": (lambda p, v=v: plot_observed(p, panels[v], v, obs["variables"][v]["units"], title))
            for v in panels}


def evaluate_conditional(dataset: Mapping[str, Any], o: Options, ens: Ensemble, t0: float) -> dict[str, Any]:
    """Score a conditional ensemble store against its truths: ``metrics.json``, ``report.md`` and figures.

    Parameters
    ----------
    dataset
        The command's plain ``dataset`` config.
    o
        The checked options (``samples.*``, ``evaluate.*``, ``output.*``; ``reference.*`` is not used).
    ens
        The opened store (it has a ``condition`` dim).
    t0
        ``time.perf_counter()`` at the start.

    Returns
    -------
    dict
        The content of ``metrics.json`` with ``output`` (the paths written).

    Raises
    ------
    EvaluateError
        No condition that can be scored (one line).
    """
    import dask

    conf, note = law_dataset(dataset, ens)
    notes = [note] if note else []
    if o.source != "auto":
        notes.append(f"reference.source={o.source} is not used: a conditional store is scored against its truths")
    v0 = ens.variables[0]
    fd = tuple(str(d) for d in ens.ds[v0].dims if d not in ("condition", "member", "lead_time"))
    with scheduler(o.dask, o.threads) as sched:
        store, more = open_conditional(ens, o.want, field_periodicity(conf, ens, fd))
        notes += more
        methods = _methods(store, conf, notes)
        leads = {v: lead_scores(store, v, methods[v]) for v in store.variables}
        log.info("sciencegen-evaluate: %d conditions x %d members of %s (%s), methods %s; %s",
                 int(store.evaluated.sum()), store.members, store.path, ", ".join(store.variables),
                 ", ".join(m.name for m in methods[store.variables[0]]), sched)
        lazy = {v: [e["lazy"] for e in ls] for v, ls in leads.items()}
        plan = plan_observed(store, ens.variables, conf) if is_observed(ens.ds) else None  # observation stores
        got, shown, observed = dask.compute(lazy, _lazy_panels(store, o.panel) if o.figures else {},
                                            plan.lazy if plan else {})
    for v, ls in leads.items():
        for e, g in zip(ls, got[v], strict=True):
            e["lazy"] = g
    if not any(e["conditions"] for ls in leads.values() for e in ls):
        notes.append("no evaluated condition has a known truth (conditions from a user's file?): nothing was scored")
    section = _section(store, methods, {v: variable_scores(store, v, ls) for v, ls in leads.items()})
    result = conditional_result(conf, _samples_info(ens, store), section, _cost(ens, store), notes, sched)
    obs_panels: dict[str, Any] = {}
    if plan is not None:
        result["observed"], obs_panels = plan.finish(observed)
    figures = _figures(result, shown) if o.figures else {}
    if plan is not None and o.figures:
        figures |= _observed_figures(result, obs_panels)
    clean = outputs.write_evaluation(result, o.out_dir, figures, t0, report=conditional_markdown)
    log.info("%s", conditional_summary(clean))
    return clean
