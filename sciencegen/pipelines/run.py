"""``run_pipeline(cfg)``: the whole job in one command: data -> train -> generate -> evaluate.

Each stage reuses what the previous run left when it matches the config, so a rerun is cheap and an
interrupted run resumes: the dataset store is reused (same config hash), training resumes from its newest
checkpoint or does nothing when it reached its bounds, generation skips completed members (and starts
over only when the model or sampler changed), evaluation is skipped when its inputs did not change.
Everything goes under the run directory: ``RUN/checkpoints``, ``RUN/figures``, ``RUN/samples.zarr``,
``RUN/evaluation/{metrics.json, report.md, *.png}``.

The stages are the four commands, composed: each stage's entry point is resolved by name from
:data:`ENTRY_POINTS` (``"module:function"`` under :mod:`sciencegen.pipelines`, imported with
:func:`importlib.import_module`, as the console scripts of :mod:`sciencegen.cli` do), so this pipeline
module imports no other pipeline module. The data stage calls :func:`sciencegen.data.prepare.prepare`
directly (the same function ``sciencegen-data`` wraps); the evaluation stage is skipped when its inputs (the
store's identity, read with :func:`sciencegen.data.ensemble.read_identity`, its complete members and the
evaluation config) did not change.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ..config import plain
from ..errors import SciencegenError
from ..models.build import is_oracle

__all__ = ["ENTRY_POINTS", "STAGES", "PipelineError", "entry_point", "run_pipeline", "stage_configs"]

log = logging.getLogger(__name__)

STAGES = ("data", "train", "generate", "evaluate")
#: the entry point of each stage that runs a command: ``"module:function"`` under ``sciencegen.pipelines``
ENTRY_POINTS = {"train": "train:run_train", "generate": "generate:run_generate", "evaluate": "evaluate:run_evaluate"}


class PipelineError(SciencegenError):
    """The pipeline cannot run; one line meant for the user."""


def _run_dir(cfg: Any) -> Path:
    if cfg.get("run_dir"):
        return Path(str(cfg["run_dir"]))
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    raise PipelineError("no run directory: run `sciencegen` (Hydra's run dir) or set run_dir=PATH")


def entry_point(stage: str) -> Callable[[Any], Any]:
    """The function that runs ``stage`` (:data:`ENTRY_POINTS`), imported by name as the CLI does.

    Parameters
    ----------
    stage
        ``train``, ``generate`` or ``evaluate``.
    """
    module, func = ENTRY_POINTS[stage].split(":")
    return getattr(importlib.import_module(f"sciencegen.pipelines.{module}"), func)


def _plain(cfg: Any) -> Any:
    return plain(cfg, PipelineError)


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_configs(cfg: Any, run: Path) -> dict[str, Any]:
    """The configs the stages run with, built from the pipeline config (``sciencegen.yaml``)."""
    c = _plain(cfg)
    common = {"dataset": c["dataset"], "data_root": c["data_root"]}
    model = dict(c["model"])
    if not is_oracle(model):
        model["checkpoint"] = str(run)
    out = {
        "data": {**common, "output": {"path": None, "overwrite": False, "dtype": "float32", "chunk_mb": 8},
                 "progress": c["progress"], "threads": c["train"].get("threads")},
        "train": {**common, "model": c["model"], "train": c["train"], "run_dir": str(run)},
        "generate": {**common, "model": model, "sampler": c["sampler"], "sde": c["sde"], "generate": c["generate"],
                     "condition": c.get("condition") or {"path": None, "select": None},
                     "observe": c.get("observe") or {},
                     "output": {"path": str(run / "samples.zarr"), "chunk": None, "overwrite": True,
                                "netcdf": None, "discard": False}},
        "evaluate": {**common, "samples": {"path": str(run / "samples.zarr"), "variables": None},
                     "reference": c["reference"], "output": {"dir": str(run / "evaluation"), "overwrite": True},
                     "evaluate": c["evaluate"]},
    }
    return {k: OmegaConf.create(v) for k, v in out.items()}


def _line(text: str) -> None:
    log.info("[sciencegen] %s", text)


def run_pipeline(cfg: Any) -> dict[str, Any]:
    """Run the stages of ``cfg.stages`` in order and log where everything is and the headline numbers.

    Parameters
    ----------
    cfg
        The composed ``sciencegen.yaml`` config.

    Returns
    -------
    dict
        ``run_dir``, per-stage results (``data``, ``train``, ``generate``, ``evaluate``), ``seconds`` and
        ``headline`` (rounds vs the sequential sampler, spectral error, paths).
    """
    stages = list(cfg.get("stages") or STAGES)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise PipelineError(f"stages: unknown {unknown}; choose from {list(STAGES)}")
    run = _run_dir(cfg)
    run.mkdir(parents=True, exist_ok=True)
    sc = stage_configs(cfg, run)
    t0 = time.perf_counter()
    result: dict[str, Any] = {"run_dir": str(run)}
    oracle = is_oracle(_plain(cfg["model"]))
    if "data" in stages:
        _line("stage 1/4: data")
        result["data"] = _data_stage(sc["data"], bool(cfg["progress"]), cfg["train"] if "train" in stages else None)
    if "train" in stages:
        if oracle:
            _line("stage 2/4: train — skipped: model=oracle is the exact denoiser")
        else:
            _line("stage 2/4: train")
            result["train"] = entry_point("train")(sc["train"])
    if "generate" in stages:
        _line("stage 3/4: generate")
        result["generate"] = entry_point("generate")(sc["generate"])
    if "evaluate" in stages:
        _line("stage 4/4: evaluate")
        result["evaluate"] = _evaluate_stage(sc["evaluate"], run)
    result["seconds"] = time.perf_counter() - t0
    result["headline"], names = _headline(cfg, result, run)
    _report(result["headline"], names, run, oracle, "evaluate" in stages)
    return result


def _data_stage(conf: Any, progress: bool, train: Any = None) -> dict[str, Any]:
    """Prepare (or reuse) the dataset store; log its summary, and the few-samples advice for ``train`` keys."""
    from ..data.prepare import prepare, summary
    from ..data.split_size import few_samples_line, train_split_size

    t = time.perf_counter()
    p = prepare(conf["dataset"], data_root=conf["data_root"], progress=progress)
    log.info("%s", summary(p, time.perf_counter() - t))
    if train is not None:   # the same advice as sciencegen-data, for this job's training keys
        holdout, batch = float(train["holdout"]), int(train["batch_size"])
        try:
            line = few_samples_line(str(p.meta.get("name")), p.samples, train_split_size(p.path, holdout), holdout,
                                    batch)
        except SciencegenError:   # too few chunks to hold any out: training says so, with what to set
            line = None
        if line:
            log.warning("%s", line)
    return {"path": str(p.path), "reused": p.reused}


def _evaluate_stage(conf: Any, run: Path) -> dict[str, Any]:
    """Evaluate the run's store, or reuse ``metrics.json`` when the store and the config did not change."""
    from ..data.ensemble import completed_members, read_identity

    ev_dir = run / "evaluation"
    stamp = ev_dir / ".inputs.json"
    store = run / "samples.zarr"
    inputs = {"store": read_identity(store) if store.exists() else None,
              "complete": int(completed_members(store).sum()) if store.exists() else 0,
              "config": _plain(conf)}
    key = _fingerprint(inputs)
    metrics_file = ev_dir / "metrics.json"
    if metrics_file.exists() and stamp.exists() and json.loads(stamp.read_text()).get("key") == key:
        _line(f"evaluation unchanged since the last run: {metrics_file}")
        return json.loads(metrics_file.read_text())
    metrics = entry_point("evaluate")(conf)
    stamp.write_text(json.dumps({"key": key}))
    return metrics


def _headline(cfg: Any, result: dict[str, Any], run: Path) -> tuple[dict[str, Any], tuple[str, str]]:
    """Rounds per batch against the sampler's sequential twin, the spectral error, the run directory; and the
    names of the sampler and of its twin."""
    from ..config import sampler_options
    from ..samplers import sequential_rounds, twin

    smp = _plain(cfg["sampler"])
    seq, seq_opts = twin(smp["name"], sampler_options(cfg["sampler"]))
    seq_rounds = sequential_rounds(seq, int(smp["steps"]), **seq_opts)  # a round = one batched call, both sides
    head: dict[str, Any] = {"run_dir": str(run), "minutes": result["seconds"] / 60}
    gen = result.get("generate")
    if gen and gen.get("done"):
        chunks = -(-gen["done"] // int(cfg["generate"]["batch_size"]))
        leads = int(gen.get("lead_times") or 1)  # a forecast rollout walks the grid once per lead time
        head["rounds_per_batch"] = gen["rounds"] / max(chunks * leads, 1)
        head["sequential_rounds"] = seq_rounds
    err = _find(result.get("evaluate") or {}, "spectral_error")
    if err is not None:
        head["spectral_error"] = err
    return head, (str(smp["name"]), str(seq))


def _report(head: Mapping[str, Any], names: tuple[str, str], run: Path, oracle: bool, evaluated: bool) -> None:
    """The end-of-run lines: where everything is and the headline numbers."""
    _line(f"done in {head['minutes']:.1f} min — run directory {run}")
    if not oracle:
        _line(f"  checkpoints: {run / 'checkpoints'}   training figures: {run / 'figures'}")
    _line(f"  ensemble store: {run / 'samples.zarr'}   (xarray.open_zarr)")
    if evaluated:
        _line(f"  report: {run / 'evaluation' / 'report.md'}   figures: {run / 'evaluation'}/*.png")
    if "rounds_per_batch" in head and names[0] == names[1]:
        _line(f"  {names[0]}: {head['rounds_per_batch']:.0f} sequential rounds per batch (a sequential sampler)")
    elif "rounds_per_batch" in head:
        seq_rounds = head["sequential_rounds"]
        _line(f"  {names[0]}: {head['rounds_per_batch']:.0f} sequential rounds per batch vs {seq_rounds} for "
              f"{names[1]} ({seq_rounds / head['rounds_per_batch']:.1f}x fewer)")
    if "spectral_error" in head:
        _line(f"  spectral error vs reference: {head['spectral_error']:.4f}")


def _find(obj: Any, key: str) -> float | None:
    """The first number under ``key`` in a nested dict (metrics.json layouts vary by dataset)."""
    if isinstance(obj, Mapping):
        if key in obj and isinstance(obj[key], (int, float)):
            return float(obj[key])
        for v in obj.values():
            r = _find(v, key)
            if r is not None:
                return r
    return None
