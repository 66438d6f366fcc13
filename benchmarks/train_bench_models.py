"""Train (or reuse) the quick-start checkpoints the learned-model Picard benchmark samples from.

Run from the repository root (issue 17, item 4; ``benchmarks/learned_picard.py`` reads the checkpoints)::

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE python benchmarks/train_bench_models.py --only grf32
    OMP_NUM_THREADS=2 python benchmarks/train_bench_models.py --only kolmogorov64 --threads 2

Each model is trained with the repository's own quick-start configuration: the ``sciencegen`` pipeline config
(``conf/sciencegen.yaml``) composed with ``experiment=quick`` (GRF 32², a tiny U-Net, 8 training minutes) or
``experiment=kolmogorov_64`` (Kolmogorov vorticity 64² with static position channels, 30 minutes), and its
``train`` stage run through :func:`sciencegen.pipelines.train.run_train`, exactly the configuration the
``sciencegen`` command hands that stage. Extra Hydra overrides go through ``--set``.

The run directory is ``CACHE/<name>-<hash>``, outside the git checkout: ``CACHE`` is ``--cache``, else
``$SCIENCEGEN_BENCH_CACHE``, else ``~/.cache/sciencegen/bench_models``; the hash covers the ``dataset``,
``model`` and ``train`` groups of the composed config (not the thread count or the progress bar), so a changed
configuration trains a new model and an unchanged one is reused: training is skipped when the run directory
already holds a checkpoint (``--resume`` instead continues it up to ``train.max_minutes``, a no-op for a
finished run). Prepared dataset stores go to ``CACHE/data`` (``--data-root`` to share the repository's).
The checkpoint paths are logged and, with ``--json``, written out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("train_bench_models")

#: benchmark model name -> the quick-start experiment (conf/experiment/) it is trained with
MODELS: dict[str, list[str]] = {
    "grf32": ["experiment=quick"],
    "kolmogorov64": ["experiment=kolmogorov_64"],
}
#: train keys that change how fast training runs but not the model it trains toward
UNHASHED_TRAIN_KEYS = ("threads", "progress", "num_workers")


def cache_root(arg: str | None) -> Path:
    """``--cache``, else ``$SCIENCEGEN_BENCH_CACHE``, else ``~/.cache/sciencegen/bench_models``."""
    root = arg or os.environ.get("SCIENCEGEN_BENCH_CACHE") or "~/.cache/sciencegen/bench_models"
    return Path(root).expanduser().resolve()


def compose(name: str, extra: list[str]) -> Any:
    """The composed ``sciencegen.yaml`` config of benchmark model ``name`` (its experiment plus ``extra``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from sciencegen.config import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose("sciencegen", overrides=[*MODELS[name], *extra])


def config_hash(cfg: Any) -> str:
    """Hash of the ``dataset``, ``model`` and ``train`` groups (minus :data:`UNHASHED_TRAIN_KEYS`)."""
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(cfg, resolve=True)
    train = {k: v for k, v in c["train"].items() if k not in UNHASHED_TRAIN_KEYS}
    key = {"dataset": c["dataset"], "model": c["model"], "train": train}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir/checkpoints`` holds a ``step_*.pt`` file."""
    return any((run_dir / "checkpoints").glob("step_*.pt"))


def train_one(name: str, root: Path, data_root: Path, threads: int, extra: list[str], resume: bool) -> dict:
    """Train (or reuse) benchmark model ``name``; return ``{name, run_dir, checkpoint, hash, trained, ...}``."""
    from omegaconf import OmegaConf

    from sciencegen.models.build import load_model
    from sciencegen.pipelines.train import run_train

    cfg = compose(name, extra)
    digest = config_hash(cfg)
    run_dir = root / f"{name}-{digest}"
    record: dict[str, Any] = {"name": name, "run_dir": str(run_dir), "hash": digest, "trained": False,
                              "overrides": [*MODELS[name], *extra]}
    if resume or not has_checkpoint(run_dir):
        train_cfg = OmegaConf.create({
            "dataset": OmegaConf.to_container(cfg.dataset, resolve=True),
            "model": OmegaConf.to_container(cfg.model, resolve=True),
            "train": {**OmegaConf.to_container(cfg.train, resolve=True), "threads": threads, "progress": False},
            "data_root": str(data_root), "run_dir": str(run_dir)})
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "bench_config.json").write_text(json.dumps(OmegaConf.to_container(train_cfg), indent=1))
        log.info("%s: training in %s (%s)", name, run_dir, " ".join(record["overrides"]))
        t0 = time.perf_counter()
        summary = run_train(train_cfg)
        record.update(trained=bool(summary.get("trained")), wall_s=time.perf_counter() - t0,
                      step=summary.get("step"), minutes=summary.get("minutes"), loss=summary.get("loss"),
                      val_loss=summary.get("val_loss"))
    else:
        log.info("%s: reusing %s (config hash %s)", name, run_dir, digest)
    _, meta = load_model(run_dir)
    record.update(checkpoint=meta["path"], checkpoint_step=meta["step"])
    log.info("%s: checkpoint %s (step %d)", name, meta["path"], meta["step"])
    return record


def main() -> None:
    """Command line: see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=sorted(MODELS), action="append",
                   help="train only this model (repeatable); default: all")
    p.add_argument("--cache", default=None, help="cache root (default $SCIENCEGEN_BENCH_CACHE or "
                   "~/.cache/sciencegen/bench_models)")
    p.add_argument("--data-root", default=None, help="prepared dataset stores (default CACHE/data)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")),
                   help="torch CPU threads for training (default $OMP_NUM_THREADS or 1)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Hydra override of the composed config, e.g. --set train.max_minutes=12")
    p.add_argument("--resume", action="store_true", help="continue an existing run up to train.max_minutes")
    p.add_argument("--json", default=None, help="write the checkpoint records to this JSON file")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    torch.set_num_threads(a.threads)
    root = cache_root(a.cache)
    data_root = Path(a.data_root).resolve() if a.data_root else root / "data"
    records = [train_one(name, root, data_root, a.threads, a.set, a.resume) for name in (a.only or sorted(MODELS))]
    for r in records:
        log.info("checkpoint %s: %s", r["name"], r["checkpoint"])
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(records, indent=1, default=str))


if __name__ == "__main__":
    main()
