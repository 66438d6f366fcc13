"""The training loop of one job (:class:`Trainer`): resume, step, log, validate, checkpoint, stop at a safe point.

Karras et al. 2022 (EDM): denoising score matching with preconditioning, loss weight λ(σ) and
ln σ ~ N(P_mean, P_std²). Per global batch of ``train.batch_size`` fields (split evenly over the DDP ranks):

1. read normalised fields ``x0`` (the loader shards the store's chunks over ranks);
2. draw ``ln σ`` and the noise ``n`` of every sample from a generator seeded by
   ``(seed, step, global sample position)`` (:func:`~sciencegen.training.schedule.train_noise`);
3. loss = mean of ``λ(σ) ‖D(x0 + σ n, σ) − x0‖²``, backward, (DDP mean of gradients);
4. clip the gradient norm, set the learning rate (linear warm-up, then cosine or constant), AdamW step;
5. update the EMA weights.

At log steps the ranks reduce the loss window, rank 0 validates, draws a figure and writes the metrics row,
and a due checkpoint is written. After every step the ranks vote (:meth:`Trainer._poll`): a signal writes a
checkpoint and raises :class:`~sciencegen.errors.Interrupted`; a failed write of rank 0 stops every rank with
one line (:class:`~sciencegen.training.state.DiskFault`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import plain
from ..errors import Interrupted, StopRequest, TrainError, stop_requests
from ..models import denoising_loss
from ..models.build import build_model, canonical_target
from ..models.checkpoint import CheckpointError, check_compatible, list_checkpoints, load_checkpoint, save_checkpoint
from .distributed import Distributed
from .metrics import LossWindow, MetricsWriter, gap_line, loss_ratio
from .options import store_batch
from .schedule import EMA, ema_beta, lr_factor, per_rank_batch, schedule_progress, train_noise
from .setup import data_info, first_batch, open_streams, prepare_data, split_batch, training_meta
from .state import FAULT, SIGNAL_CODE, SIGNAL_NAME, check_run_dir, fault_error, rng_state, set_rng_state
from .validation import FigureSpec, figure_axes, sample_figure, validation_losses

__all__ = ["Trainer"]

log = logging.getLogger(__name__)


def _canonical_meta_model(meta: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's meta with an old model ``_target_`` path mapped to today's (resuming compares them)."""
    model = meta.get("model")
    if isinstance(model, dict) and "_target_" in model:
        meta = {**meta, "model": {**model, "_target_": canonical_target(model["_target_"])}}
    return meta


class Trainer:
    """One training job (``sciencegen-train``); :meth:`run` trains and returns the summary.

    Parameters
    ----------
    cfg
        The job's config (``dataset``, ``model``, ``train``, ``data_root``).
    opts
        The checked ``train`` options (:func:`~sciencegen.training.options.train_options`).
    run_dir
        The run directory (checkpoints, ``metrics.csv``, figures).
    dist
        The ranks of the job.
    """

    def __init__(self, cfg: Any, opts: dict[str, Any], run_dir: Path, dist: Distributed):
        self.cfg, self.o, self.run_dir, self.d = cfg, opts, run_dir, dist
        self.dataset_cfg = plain(cfg["dataset"], TrainError)
        self.local_batch = per_rank_batch(opts["batch_size"], dist.world)
        self.device = dist.device
        self.amp = dist.device.type == "cuda" and opts["precision"] in ("auto", "bf16")
        if opts["precision"] == "bf16" and dist.device.type != "cuda":
            raise TrainError("train.precision=bf16 needs a GPU (bf16 autocast is used on CUDA only)")

    # -- setup ----------------------------------------------------------------------------------------------------

    def _setup(self) -> None:
        """Data, model, EMA, optimizer, DDP wrapper and streams."""
        o = self.o
        self.prepared = prepare_data(self.cfg, self.d, bool(o["progress"]))
        o["batch_size"], self.train_samples = store_batch(o, self.prepared, self.d.world, self.d.main)
        self.local_batch = per_rank_batch(o["batch_size"], self.d.world)  # few samples: a smaller batch (fit_batch)
        self.info = data_info(self.prepared, self.dataset_cfg)
        self.field_shape, self.channels = self.info.field_shape, self.info.channels
        self.meta = training_meta(self.cfg, self.prepared, self.info, self.dataset_cfg, o)
        self.model_meta = self.meta["model"]
        torch.manual_seed(o["seed"])
        self.core = build_model(self.model_meta, self.dataset_cfg).to(self.device)
        self.params = [p for p in self.core.parameters() if p.requires_grad]
        self.n_params = sum(p.numel() for p in self.params)
        self.sigma_data = float(getattr(self.core, "sigma_data", 1.0))
        self.ema = EMA(self.core)
        self.opt = torch.optim.AdamW(self.params, lr=o["lr"], betas=tuple(float(b) for b in o["betas"]),
                                     eps=float(o["eps"]), weight_decay=float(o["weight_decay"]))
        self.fwd: nn.Module = self.core
        if self.d.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.fwd = DDP(self.core, device_ids=ids)
        if o["compile"]:
            self.fwd = torch.compile(self.fwd)
        self.streams = open_streams(self.info.path, o, self.d, self.local_batch)
        self.stream, self.val_stream = self.streams.train, self.streams.validation

    # -- checkpoints ----------------------------------------------------------------------------------------------

    def _resume(self) -> Path | None:
        """Restore the newest valid checkpoint of the run directory, if any; returns its path."""
        path: Any = None
        ckpt: dict | None = None
        if self.d.main and list_checkpoints(self.run_dir):
            try:  # the newest valid one (damaged files are skipped with a warning); RNG states stay on the CPU
                path, ckpt = load_checkpoint(self.run_dir, map_location="cpu")
            except CheckpointError as exc:
                path = exc
        path = self.d.broadcast(path)
        if isinstance(path, CheckpointError):
            raise TrainError(f"{path} -- remove the damaged checkpoints or use another hydra.run.dir")
        if path is None:
            return None
        try:
            if ckpt is None:  # the other ranks load the file rank 0 chose
                _, ckpt = load_checkpoint(path, map_location="cpu")
            check_compatible(_canonical_meta_model(ckpt["meta"]), self.meta, keys=("model", "dataset"), where=path)
        except CheckpointError as exc:
            raise TrainError(f"{exc}; resume with the same model and dataset or use another hydra.run.dir") from None
        st = ckpt["state"]
        self.core.load_state_dict(st["model"])
        self.ema.module.load_state_dict(st["ema"])
        self.opt.load_state_dict(st["optimizer"])
        self.step, self.epoch = int(st["step"]), int(st["epoch"])
        self.batch_in_epoch, self.samples = int(st["batch_in_epoch"]), int(st["samples"])
        self.minutes = float(st["minutes"])
        rng = st.get("rng") or []
        if len(rng) == self.d.world:
            set_rng_state(rng[self.d.rank], self.device)
        else:  # another world size: fresh but reproducible streams
            torch.manual_seed(self.o["seed"] + 1000003 * self.step + self.d.rank)
        return path

    def _save(self) -> Path | None:
        """A checkpoint of this step (rank 0 writes; every rank's RNG state is in it)."""
        rng = self.d.gather(rng_state(self.device))
        if not self.d.main:
            return None
        state = {
            "model": self.core.state_dict(), "ema": self.ema.module.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": {"lr": self.lr, "progress": self._progress(), "warmup_steps": self.o["warmup_steps"],
                          "schedule": self.o["schedule"]},
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "samples": self.samples,
            "minutes": self.minutes, "rng": rng, "world_size": self.d.world,
        }
        try:
            self.checkpoint = save_checkpoint(self.run_dir, self.step, state, keep=self.o["keep"], meta=self.meta)
        except OSError as exc:  # disk full: nothing of this save is left; the ranks stop together (see _poll)
            if exc.errno is None:
                raise
            self._fault = self._fault or exc
            return None
        self.saved_step, self.saved_minutes = self.step, self.minutes
        return self.checkpoint

    # -- pieces of a step -----------------------------------------------------------------------------------------

    def _bar_progress(self, minutes: float | None = None) -> float:
        o = self.o
        return schedule_progress(self.step, self.minutes if minutes is None else minutes,
                                 max_steps=o["max_steps"], max_minutes=o["max_minutes"])

    def _progress(self) -> float:
        return schedule_progress(self.step, self.minutes, max_steps=self.o["max_steps"],
                                 max_minutes=self.o["max_minutes"], horizon_steps=self.o["horizon_steps"])

    def _lr(self, step: int) -> float:
        o = self.o
        return o["lr"] * lr_factor(step, self._progress(), warmup_steps=o["warmup_steps"], schedule=o["schedule"],
                                   final_ratio=o["final_lr_ratio"])

    def _autocast(self) -> Any:
        if self.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _batches(self) -> Iterator[torch.Tensor]:
        """Batches forever, advancing the epoch; the first epoch resumes after ``batch_in_epoch`` batches."""
        skip = self.batch_in_epoch
        while True:
            self.stream.set_epoch(self.epoch)
            for i, x in enumerate(self.streams.loader):
                if i < skip:
                    continue
                yield x
            skip = 0
            self.epoch += 1
            self.batch_in_epoch = 0

    def _train_step(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        o = self.o
        x0, cond = split_batch(batch)
        x0 = x0.to(self.device, non_blocking=True)
        cond = None if cond is None else cond.to(self.device, non_blocking=True)
        first = self.d.rank * self.local_batch
        sigma, noise = train_noise(o["seed"], self.step, range(first, first + x0.shape[0]), x0.shape[1:],
                                   p_mean=float(o["p_mean"]), p_std=float(o["p_std"]), device=self.device)
        self.fwd.train()
        with self._autocast():
            valid = torch.isfinite(x0) if self.info.masked else None  # masked data: the loss ignores NaN points
            loss = denoising_loss(self.fwd, x0, sigma, noise, cond=cond, sigma_data=self.sigma_data,
                                  valid=valid).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.params, o["grad_clip"]) if o["grad_clip"] > 0 else None
        for g in self.opt.param_groups:
            g["lr"] = self.lr
        self.opt.step()
        beta = ema_beta(o["batch_size"], self.samples, **self.o["ema"])
        self.ema.update(self.core, beta)
        return loss.detach(), (gn.detach() if gn is not None else None)

    def _validate(self) -> tuple[float | None, float | None]:
        """Validation loss of the EMA and of the raw model (rank 0; ``None`` without held-out data)."""
        if self.val_stream is None:
            return None, None
        o = self.o
        losses = validation_losses({"ema": self.ema.module, "raw": self.core}, self.val_stream,
                                   batches=o["val_batches"], seed=o["seed"], p_mean=float(o["p_mean"]),
                                   p_std=float(o["p_std"]), device=self.device, sigma_data=self.sigma_data,
                                   autocast=self._autocast)
        return (None, None) if losses is None else (losses["ema"], losses["raw"])

    def _figure(self) -> float | None:
        """Samples of the EMA model: ``RUN/figures/step_*.png``; returns the spectral error (analytic data)."""
        o = self.o
        if o["figure_members"] < 1 or self.fig_spec.members < 1 or len(self.field_shape) != 2:
            return None
        title = (f"{self.dataset_cfg.get('name', 'data')} {'x'.join(map(str, self.field_shape))}, "
                 f"{self.model_meta.get('name', 'model')}, step {self.step}, {self.minutes:.1f} min "
                 f"(EMA, {o['figure_sampler']} {o['figure_steps']} steps)")
        path = self.run_dir / "figures" / f"step_{self.step:09d}.png"
        written, err = sample_figure(self.ema.module, self.fig_spec, path, title=title, device=self.device,
                                     step=self.step)
        if written is not None:
            self.figure = written
        return err

    def _figure_spec(self) -> FigureSpec:
        o = self.o
        data, label, cond = (None, "training data", None)
        if self.d.main and o["figure_members"] > 0:
            data, label, cond = first_batch(self.streams, o["figure_members"])
        if self.info.cond_channels and cond is None:
            return FigureSpec((self.channels, *self.field_shape), self.info.mean, self.info.std, 0,
                              o["figure_sampler"], o["figure_steps"], o["seed"])  # no condition: no figure
        return FigureSpec((self.channels, *self.field_shape), self.info.mean, self.info.std, o["figure_members"],
                          o["figure_sampler"], o["figure_steps"], o["seed"], data, label, self.info.target, cond,
                          figure_axes(self.prepared))

    # -- the loop -------------------------------------------------------------------------------------------------

    def _done(self) -> str | None:
        if self.o["max_steps"] is not None and self.step >= self.o["max_steps"]:
            return "max_steps"
        if self.o["max_minutes"] is not None and self.minutes >= self.o["max_minutes"]:
            return "max_minutes"
        return None

    def run(self) -> dict[str, Any]:
        """Set up, resume, train to the bounds (or a signal); returns the summary (see ``run_train``)."""
        o, d = self.o, self.d
        self._fault: OSError | None = None  # rank 0's failed write, raised on all ranks at the next safe point
        check_run_dir(self.run_dir, d)
        self._setup()
        self.step = self.epoch = self.batch_in_epoch = self.samples = 0
        self.minutes = 0.0
        self.checkpoint: Path | None = None
        self.figure: Path | None = None
        resumed = self._resume()
        self.checkpoint = resumed
        self.saved_step, self.saved_minutes = self.step, self.minutes
        start_step = self.step
        self.lr = self._lr(max(self.step, 1))
        base = self._summary(start_step, None, None, None, resumed)
        if d.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            where = f"resumed from {resumed} (step {self.step}, {self.minutes:.2f} min)" if resumed else "new run"
            log.info("sciencegen-train: %s; %s parameters, data %s (%d channel(s), %s), global batch %d on %d "
                     "rank(s), device %s", where, f"{self.n_params:,}", self.prepared.path, self.channels,
                     "x".join(map(str, self.field_shape)), o["batch_size"], d.world, self.device)
        if self._done():
            base.update(trained=False, stopped="done")
            if d.main:
                log.info("sciencegen-train: nothing to do: step %d, %.2f min already reach the bounds "
                         "(train.max_steps=%s, train.max_minutes=%s); raise them to continue. Checkpoint: %s",
                         self.step, self.minutes, o["max_steps"], o["max_minutes"], resumed)
            return base
        metrics = self._open_metrics()
        self.fig_spec = self._figure_spec()
        try:
            return self._loop(metrics, start_step, resumed)
        finally:
            if metrics is not None:
                metrics.close()

    def _open_metrics(self) -> MetricsWriter | None:
        """``metrics.csv`` of rank 0 (rows past the checkpoint dropped); a disk fault stops every rank here."""
        metrics = None
        if self.d.main:
            try:
                metrics = MetricsWriter(self.run_dir, self.step, bool(self.o["tensorboard"]))
            except OSError as exc:
                if exc.errno is None:
                    raise
                self._fault = exc
        if self.d.agree(FAULT if self._fault is not None else 0) == FAULT:
            raise self._fault_error()
        return metrics

    def _loop(self, metrics: MetricsWriter | None, start_step: int, resumed: Path | None) -> dict[str, Any]:
        from tqdm.auto import tqdm

        o, d = self.o, self.d
        # the bar shows the fraction of the run done by whichever bound ends it first (steps or minutes),
        # so its ETA is right when train.max_minutes binds; the step count is in the postfix
        bar = tqdm(total=100.0, initial=round(100 * self._bar_progress(), 1), desc="train", dynamic_ncols=True,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]",
                   disable=not (d.main and o["progress"]), file=sys.stderr, leave=True)
        self._window = LossWindow(self.device)
        self._last: dict[str, float | None] = {"loss": None, "val": None, "sps": None}
        self._t_run, self._minutes0 = time.perf_counter(), self.minutes
        batches = self._batches()
        stopped: str | None = None
        try:
            with stop_requests() as stop:
                while stopped is None:
                    stopped = self._iteration(batches, bar, metrics)
                    self._poll(stop, stopped)  # the safe point: after an optimiser step and its row/checkpoint
        finally:
            bar.close()
        last_loss, last_val, sps = self._last["loss"], self._last["val"], self._last["sps"]
        summary = self._summary(start_step, last_loss, last_val, sps, resumed)
        val_raw, row_loss = self._last.get("val_raw"), self._last.get("row_loss")
        summary.update(trained=True, stopped=stopped, val_loss_raw=val_raw, val_ratio=loss_ratio(val_raw, row_loss),
                       gap=gap_line(val_raw, row_loss, self.train_samples))
        if d.main:
            val = f", val {last_val:.4g}" if last_val is not None else ""
            log.info("sciencegen-train: %d steps this run (step %d, epoch %d, %.2f min in all, stopped by %s), "
                     "%.0f samples/s; loss %.4g%s; checkpoint %s", self.step - start_step, self.step, self.epoch,
                     self.minutes, stopped, sps or 0, last_loss, val, self.checkpoint)
            if summary.get("gap"):
                log.info("sciencegen-train: %s", summary["gap"])
        return summary

    def _local_minutes(self) -> float:
        return self._minutes0 + (time.perf_counter() - self._t_run) / 60.0

    def _iteration(self, batches: Iterator[torch.Tensor], bar: Any, metrics: MetricsWriter | None) -> str | None:
        """One optimiser step, then (at log steps and the end) a metrics row and a due checkpoint.

        Returns the bound that ends the run (``"max_steps"``/``"max_minutes"``) or ``None``.
        """
        o, d = self.o, self.d
        t0 = time.perf_counter()
        x0 = next(batches)
        self.batch_in_epoch += 1
        self.step += 1
        self.lr = self._lr(self.step)
        loss, gn = self._train_step(x0)
        self.samples += o["batch_size"]
        self._window.add(loss, gn, time.perf_counter() - t0)
        local_minutes = self._local_minutes()
        bar.n = round(100 * self._bar_progress(local_minutes), 1)
        if self.step % 10 == 0:
            bar.refresh()
        if self.device.type == "cpu" and d.world == 1 and not math.isfinite(float(loss)):  # costs nothing on CPU
            self._nonfinite(float(loss), metrics)
        is_log = self.step % o["log_every"] == 0
        max_steps_hit = o["max_steps"] is not None and self.step >= o["max_steps"]
        if d.world == 1 or is_log or max_steps_hit:  # ranks agree on the time at log steps
            self.minutes = d.max(local_minutes)
        stopped = self._done()
        if is_log or stopped:
            self._row(metrics, bar, stopped)
            due = (o["ckpt_every_steps"] and self.step % o["ckpt_every_steps"] == 0) or (
                o["ckpt_every_minutes"] and self.minutes - self.saved_minutes >= o["ckpt_every_minutes"])
            if due or stopped:
                self._save()
        return stopped

    def _row(self, metrics: MetricsWriter | None, bar: Any, stopped: str | None) -> None:
        """Reduce the window across ranks, check it, validate, draw a figure and write the metrics row."""
        o, d, w = self.o, self.d, self._window
        tot_loss, tot_n, tot_time = d.sum([float(w.loss), w.n, w.time])
        mean_loss = tot_loss / max(tot_n, 1)
        if not math.isfinite(mean_loss):
            self._nonfinite(mean_loss, metrics)
        row: dict[str, Any] = {
            "step": self.step, "epoch": self.epoch, "samples": self.samples, "minutes": self.minutes,
            "lr": self.lr, "loss": mean_loss, "grad_norm": float(w.gn) / w.gn_n if w.gn_n else None,
        }
        sps = o["batch_size"] * w.steps / max(tot_time / d.world, 1e-9)
        row["samples_per_s"] = sps
        self._last.update(loss=mean_loss, sps=sps)
        w.reset()
        if not d.main:
            return
        try:
            if (o["val_every"] and self.step % o["val_every"] == 0) or stopped:
                row["val_loss"], row["val_loss_raw"] = self._validate()
                row["val_ratio"] = loss_ratio(row["val_loss_raw"], mean_loss)  # ~1 unless over-fitting
                if row["val_loss"] is not None:
                    self._last.update(val=row["val_loss"], val_raw=row["val_loss_raw"], row_loss=mean_loss)
            if o["figure_members"] and ((o["figure_every"] and self.step % o["figure_every"] == 0) or stopped):
                row["spec_err"] = self._figure()
            assert metrics is not None
            metrics.write(row)
        except OSError as exc:  # disk full: the ranks stop together at the next safe point (see _poll)
            if exc.errno is None:
                raise
            self._fault = self._fault or exc
        bar.set_postfix({"step": self.step, "loss": f"{mean_loss:.4g}", "samples/s": f"{sps:.0f}",
                         "min": f"{self.minutes:.1f}"}, refresh=False)

    # -- stopping at a safe point ---------------------------------------------------------------------------------

    def _poll(self, stop: StopRequest, stopped: str | None) -> None:
        """All ranks vote on stopping: a disk fault of rank 0 ends the job, a signal checkpoints and interrupts.

        A signal that arrives in the last step of a run changes nothing: the run ends normally with its checkpoint.
        """
        code = self.d.agree(FAULT if self._fault is not None else SIGNAL_CODE.get(stop.signal or "", 0))
        if code == FAULT:
            raise self._fault_error()
        if code and stopped is None:
            self._interrupt(SIGNAL_NAME[code])

    def _interrupt(self, signame: str) -> None:
        """Write a checkpoint of the current step (unless it has one) and raise :class:`Interrupted`."""
        self.minutes = self.d.max(self._local_minutes())
        if self.checkpoint is None or self.saved_step != self.step:
            self._save()
        if self.d.agree(FAULT if self._fault is not None else 0) == FAULT:
            raise self._fault_error()
        where = self.checkpoint if self.d.main else f"{self.run_dir} by rank 0"
        if self.d.main:
            log.info("%s at step %d: checkpoint written to %s", signame, self.step, where)
        raise Interrupted(f"interrupted ({signame}); checkpoint step {self.step} written to {where}, rerun the "
                          "same command to resume")

    def _fault_error(self) -> TrainError:
        return fault_error(self._fault, step=self.step, run_dir=self.run_dir, checkpoint=self.checkpoint,
                           saved_step=self.saved_step)

    def _nonfinite(self, value: float, metrics: MetricsWriter | None) -> None:
        good = f"the last good checkpoint is {self.checkpoint}" if self.checkpoint else "no checkpoint was saved"
        if metrics is not None:
            with contextlib.suppress(OSError):  # the loss is the news; a full disk would hide it
                metrics.write({"step": self.step, "epoch": self.epoch, "samples": self.samples,
                               "minutes": self.minutes, "lr": self.lr, "loss": value})
        raise TrainError(f"the loss became {value} at step {self.step} (lr {self.lr:.3g}): training stopped without "
                         f"saving this state; {good} (lower train.lr, raise train.warmup_steps or check the data)")

    def _summary(self, start_step: int, loss: float | None, val: float | None, sps: float | None,
                 resumed: Path | None) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir), "trained": False, "step": self.step, "start_step": start_step,
            "epoch": self.epoch, "samples": self.samples, "minutes": self.minutes, "loss": loss, "val_loss": val,
            "checkpoint": str(self.checkpoint) if self.checkpoint else None, "resumed_from": str(resumed)
            if resumed else None, "stopped": None, "samples_per_s": sps, "parameters": self.n_params,
            "world_size": self.d.world, "device": str(self.device), "metrics": str(self.run_dir / "metrics.csv"),
            "figure": str(self.figure) if getattr(self, "figure", None) else None,
        }
