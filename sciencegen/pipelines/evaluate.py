"""``run_evaluate(cfg)``: score an ensemble store against a reference (the exact law, held-out data, a store).

This module only walks through the rooms of :mod:`sciencegen.evaluation` (options, outputs, samples,
readability, references, metrics, report) and :mod:`sciencegen.analysis.figures`; a conditional store (a
``condition`` dim) goes to :func:`~sciencegen.evaluation.conditional_run.evaluate_conditional` instead (scores
against the truths in the store, with baselines). docs/evaluate.md says what is computed and written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from ..data.prepare import make_source
from ..errors import Interrupted
from ..evaluation import EvaluateError, open_ensemble, outputs
from ..evaluation.cond_store import is_conditional
from ..evaluation.conditional_run import evaluate_conditional
from ..evaluation.metrics import compute, field_units, panels, scheduler, variable_metrics
from ..evaluation.options import Options, evaluation_dataset, read_options
from ..evaluation.readable import readable_members
from ..evaluation.references import ReferenceRequest, build_reference, check_grid, dataset_hint
from ..evaluation.report import build_result, format_summary, start_line
from ..evaluation.samples import sample_cost, samples_side, select_variables

__all__ = ["EvaluateError", "run_evaluate"]

log = logging.getLogger(__name__)


def run_evaluate(cfg: Mapping[str, Any] | Any) -> dict[str, Any]:
    """The ``sciencegen-evaluate`` job: ``metrics.json``, ``report.md`` and figures in ``output.dir``.

    Parameters
    ----------
    cfg
        The composed config of ``conf/evaluate.yaml`` (``dataset``, ``data_root``, ``samples``, ``reference``,
        ``output``, ``evaluate``).

    Returns
    -------
    dict
        The content of ``metrics.json`` (small numpy arrays as lists), plus ``output`` (paths written).

    Raises
    ------
    EvaluateError, DataError
        Bad input, an unusable ``output.dir``, or no readable complete members, with a one-line message.
    Interrupted
        SIGINT / SIGTERM: the evaluation stopped; no ``metrics.json`` was written.
    """
    t0 = time.perf_counter()
    opts = read_options(cfg)
    created = outputs.prepare_output(opts.out_dir, opts.overwrite)
    finished = False
    try:
        with outputs.sigterm_stops():
            result = _evaluate(cfg, opts, t0)
        finished = True
        return result
    except KeyboardInterrupt as exc:
        sig = "SIGTERM" if isinstance(exc, outputs.Terminated) else "SIGINT"
        raise Interrupted(f"interrupted ({sig}); the evaluation of {opts.store} stopped before writing "
                          f"{opts.out_dir / 'metrics.json'}: rerun the same command") from None
    finally:
        if not finished:
            outputs.remove_dirs(created)


def _evaluate(cfg: Any, o: Options, t0: float) -> dict[str, Any]:
    """The evaluation proper (after ``output.dir`` was checked): samples, reference, metrics, outputs."""
    ens = open_ensemble(o.store)
    dataset, origin = evaluation_dataset(cfg, ens.identity.get("dataset"))
    if origin == "store":
        log.info("dataset %s: as recorded in %s (give dataset options to evaluate against another)",
                 dataset.get("name"), o.store)
    if is_conditional(ens.ds):  # the truth is in the store: scores per condition and lead time, with baselines
        return evaluate_conditional(dataset, o, ens, t0)
    source = make_source(dataset)
    _, spec, ds_label = source.open()
    variables = select_variables(ens, o.want, spec.variables, dataset.get("name"))
    hint, note = dataset_hint(ens.identity.get("dataset"), dataset)
    with scheduler(o.dask, o.threads) as sched:
        keep, unread, line = readable_members(ens, variables, "samples.path")
        if line:
            log.warning(line)
        samples, warn = samples_side(ens, variables, keep, unread)
        request = ReferenceRequest(dataset, source, spec, ds_label, variables, samples, members=o.cap,
                                   holdout=o.holdout, data_root=o.data_root, hint=hint)
        ref = build_reference(o.source, request)
        samples = check_grid(samples, ref, hint)
        warn += [w for w in (line, ref.info.get("warning"), note) if w]
        log.info("%s", start_line(samples, ref, variables, sched))
        comp = compute(samples, ref, o.bins, o.max_lag)
        shown = panels(samples, ref, variables, o.panel) if o.figures else {}
    cost, notes = sample_cost(ens, keep)
    units = field_units(ens.ds, ref, variables)
    metrics = {v: variable_metrics(v, comp[v], samples, ref, units[v]) for v in variables}
    result = build_result(dataset, samples, ref, metrics, cost, warn + notes, sched,
                          {"bins": o.bins, "max_lag": o.max_lag})
    figures = outputs.figure_writers(result, samples, ref, shown, units) if o.figures else {}
    clean = outputs.write_evaluation(result, o.out_dir, figures, t0)
    log.info("%s", format_summary(clean))
    return clean
