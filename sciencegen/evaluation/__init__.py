"""Evaluation of a generated ensemble against a reference: the rooms behind ``sciencegen-evaluate``.

:func:`sciencegen.pipelines.evaluate.run_evaluate` walks through these modules in order:

* :mod:`~sciencegen.evaluation.options`: the options of one run, checked before any work;
* :mod:`~sciencegen.evaluation.outputs`: ``output.dir`` probed first, the outputs written atomically at the end
  (``metrics.json`` last), SIGTERM stops like Ctrl-C;
* :mod:`~sciencegen.evaluation.samples`: the ensemble store opened lazily, its complete members, their cost;
* :mod:`~sciencegen.evaluation.readable`: the complete members whose chunks cannot be decoded, excluded and
  named with the repair command;
* :mod:`~sciencegen.evaluation.references`: what the samples are compared with, a registry chosen by
  ``reference.source`` (``exact``, ``heldout``, ``auto`` or a store path). **Add a reference** by registering
  one function ``build(request) -> Side`` with :func:`~sciencegen.evaluation.references.register_reference`
  (see that module and docs/evaluate.md);
* :mod:`~sciencegen.evaluation.metrics`: two streaming Dask passes, then the per-variable numbers;
* :mod:`~sciencegen.evaluation.report`: ``metrics.json``'s content, ``report.md`` and the terminal summary.

A conditional store (a ``condition`` dim) is scored against the truths it holds instead, by
:func:`~sciencegen.evaluation.conditional_run.evaluate_conditional`: :mod:`~sciencegen.evaluation.cond_store` (the
store), :mod:`~sciencegen.evaluation.baselines` (climatology, persistence, nearest, bicubic, the exact posterior),
:mod:`~sciencegen.evaluation.conditional` (the scores) and :mod:`~sciencegen.evaluation.conditional_report`.

The figures are drawn by :mod:`sciencegen.analysis.figures`. Everything shares
:class:`~sciencegen.evaluation.common.Side` (one side of the comparison) and
:class:`~sciencegen.evaluation.common.EvaluateError` (:mod:`~sciencegen.evaluation.common`).
"""

from .common import TASK_BYTES, EvaluateError, Side
from .readable import unreadable_members
from .references import EXACT_VALUES, REFERENCES, ReferenceRequest, exact_spectrum, register_reference
from .report import format_summary
from .samples import Ensemble, open_ensemble

__all__ = ["EXACT_VALUES", "REFERENCES", "TASK_BYTES", "Ensemble", "EvaluateError", "ReferenceRequest", "Side",
           "exact_spectrum", "format_summary", "open_ensemble", "register_reference", "unreadable_members"]
