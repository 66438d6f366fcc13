"""``run_pipeline(cfg)``: the whole job in one command: data -> train -> generate -> evaluate.

Each stage reuses what the previous run left when it matches the config, so a rerun is cheap and an
interrupted run resumes: the dataset store is reused (same config hash), training resumes from its newest
checkpoint or does nothing when it reached its bounds, generation skips completed members (and starts
over only when the model or sampler changed), evaluation is skipped when its inputs did not change.
Everything goes under the run directory: ``RUN/checkpoints``, ``RUN/figures``, ``RUN/samples.zarr``,
``RUN/evaluation/{metrics.json, report.md, *.png}``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ..errors import SciencegenError
from .train import _plain

__all__ = ["STAGES", "PipelineError", "run_pipeline", "stage_configs"]

STAGES = ("data", "train", "generate", "evaluate")


class PipelineError(SciencegenError):
    """The pipeline cannot run; one line meant for the user."""


def _run_dir(cfg: Any) -> Path:
    if cfg.get("run_dir"):
        return Path(str(cfg["run_dir"]))
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    raise PipelineError("no run directory: run `sciencegen` (Hydra's run dir) or set run_dir=PATH")


def _is_oracle(model: Mapping[str, Any]) -> bool:
    return model.get("name") == "oracle" or str(model.get("_target_", "")).endswith("oracle_denoiser")


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_configs(cfg: Any, run: Path) -> dict[str, Any]:
    """The configs the stages run with, built from the pipeline config (``sciencegen.yaml``)."""
    c = _plain(cfg)
    common = {"dataset": c["dataset"], "data_root": c["data_root"]}
    model = dict(c["model"])
    if not _is_oracle(model):
        model["checkpoint"] = str(run)
    out = {
        "data": {**common, "output": {"path": None, "overwrite": False, "dtype": "float32", "chunk_mb": 8},
                 "progress": c.get("progress", True), "threads": c["train"].get("threads")},
        "train": {**common, "model": c["model"], "train": c["train"], "run_dir": str(run)},
        "generate": {**common, "model": model, "sampler": c["sampler"], "sde": c["sde"], "generate": c["generate"],
                     "output": {"path": str(run / "samples.zarr"), "chunk": None, "overwrite": True,
                                "netcdf": None, "discard": False}},
        "evaluate": {**common, "samples": {"path": str(run / "samples.zarr"), "variables": None},
                     "reference": c["reference"], "output": {"dir": str(run / "evaluation"), "overwrite": True},
                     "evaluate": c["evaluate"]},
    }
    return {k: OmegaConf.create(v) for k, v in out.items()}


def _line(text: str) -> None:
    print(f"[sciencegen] {text}", flush=True)


def run_pipeline(cfg: Any) -> dict[str, Any]:
    """Run the stages of ``cfg.stages`` in order and print where everything is and the headline numbers.

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
    from ..samplers import twin
    from ..samplers.api import sampler_table
    from .data import prepare, summary
    from .evaluate import run_evaluate
    from .generate import run_generate
    from .train import run_train

    stages = list(cfg.get("stages") or STAGES)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise PipelineError(f"stages: unknown {unknown}; choose from {list(STAGES)}")
    run = _run_dir(cfg)
    run.mkdir(parents=True, exist_ok=True)
    sc = stage_configs(cfg, run)
    t0 = time.perf_counter()
    result: dict[str, Any] = {"run_dir": str(run)}
    oracle = _is_oracle(_plain(cfg["model"]))
    if "data" in stages:
        _line("stage 1/4: data")
        t = time.perf_counter()
        p = prepare(sc["data"]["dataset"], data_root=sc["data"]["data_root"],
                    progress=bool(cfg.get("progress", True)))
        print(summary(p, time.perf_counter() - t), flush=True)
        result["data"] = {"path": str(p.path), "reused": p.reused}
    if "train" in stages:
        if oracle:
            _line("stage 2/4: train — skipped: model=oracle is the exact denoiser")
        else:
            _line("stage 2/4: train")
            result["train"] = run_train(sc["train"])
    if "generate" in stages:
        _line("stage 3/4: generate")
        result["generate"] = run_generate(sc["generate"])
    if "evaluate" in stages:
        _line("stage 4/4: evaluate")
        ev_dir = run / "evaluation"
        stamp = ev_dir / ".inputs.json"
        from ..data.ensemble import completed_members, read_meta

        store = run / "samples.zarr"
        inputs = {"store": (read_meta(store) or {}).get("identity") if store.exists() else None,
                  "complete": int(completed_members(store).sum()) if store.exists() else 0,
                  "config": _plain(sc["evaluate"])}
        key = _fingerprint(inputs)
        metrics_file = ev_dir / "metrics.json"
        if metrics_file.exists() and stamp.exists() and json.loads(stamp.read_text()).get("key") == key:
            _line(f"evaluation unchanged since the last run: {metrics_file}")
            result["evaluate"] = json.loads(metrics_file.read_text())
        else:
            result["evaluate"] = run_evaluate(sc["evaluate"])
            stamp.write_text(json.dumps({"key": key}))
    result["seconds"] = time.perf_counter() - t0

    # ---- the headline
    smp = _plain(cfg["sampler"])
    from ..config import sampler_options

    opts = sampler_options(cfg["sampler"])
    seq, seq_opts = twin(smp["name"], opts)
    seq_rounds = sampler_table(seq, int(smp["steps"]), **seq_opts)[1].steps
    head: dict[str, Any] = {"run_dir": str(run), "minutes": result["seconds"] / 60}
    gen = result.get("generate")
    if gen and gen.get("done"):
        chunks = -(-gen["done"] // int(cfg["generate"]["batch_size"]))
        head["rounds_per_batch"] = gen["rounds"] / max(chunks, 1)
        head["sequential_rounds"] = seq_rounds
    ev = result.get("evaluate") or {}
    err = _find(ev, "spectral_error")
    if err is not None:
        head["spectral_error"] = err
    result["headline"] = head
    _line(f"done in {head['minutes']:.1f} min — run directory {run}")
    if not oracle:
        _line(f"  checkpoints: {run / 'checkpoints'}   training figures: {run / 'figures'}")
    _line(f"  ensemble store: {run / 'samples.zarr'}   (xarray.open_zarr)")
    if "evaluate" in stages:
        _line(f"  report: {run / 'evaluation' / 'report.md'}   figures: {run / 'evaluation'}/*.png")
    if "rounds_per_batch" in head:
        _line(f"  {smp['name']}: {head['rounds_per_batch']:.0f} sequential rounds per batch vs {seq_rounds} for "
              f"{seq} ({seq_rounds / head['rounds_per_batch']:.1f}x fewer)")
    if "spectral_error" in head:
        _line(f"  spectral error vs reference: {head['spectral_error']:.4f}")
    return result


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
