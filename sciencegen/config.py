"""Structured-config schemas (Hydra ConfigStore): typed keys, so a misspelt or mistyped key is an error.

Every option of the config groups ``dataset``, ``model``, ``train``, ``sampler``, ``generate`` and ``evaluate``
names its schema first in its ``defaults`` list, e.g. ``conf/dataset/grf.yaml``::

    defaults:
      - /schema/dataset/grf@_here_

:func:`register` stores the schemas under the group ``schema/<group>`` (so they are not options of the
group itself); importing :mod:`sciencegen.conf` calls it, and so does every Hydra entry point.

The YAML files hold the values: a schema field without a default is ``MISSING`` until its YAML sets it,
so no default is written twice. Each field's ``help`` metadata is its one-line description (the
configuration reference ``docs/configuration.md`` is generated from them by ``tools/config_reference.py``).
Keys that take a name *or* a list of names (``dataset.variables``, ...) are typed ``Any``: OmegaConf
cannot express ``str | list[str]``. So are the nullable mappings (``dataset.select``, ``dataset.periodic``,
``model.dataset``): in OmegaConf 2.3 an ``Optional[Dict]`` field holding ``null`` fails on a ``{...}`` override
(``AttributeError: 'NoneType' object has no attribute 'get'``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = [
    "SCHEMAS",
    "EMAConfig",
    "EvaluateConfig",
    "GRFConfig",
    "GenerateConfig",
    "KolmogorovConfig",
    "NetCDFConfig",
    "OracleConfig",
    "SDEConfig",
    "SamplerConfig",
    "TrainConfig",
    "UNetConfig",
    "ZarrConfig",
    "config_dir",
    "instantiate",
    "plain",
    "register",
    "sampler_options",
]


def _key(help: str, default: Any = MISSING) -> Any:
    """A schema field: its one-line help, and a default only where no YAML sets the key."""
    return field(default=default, metadata={"help": help})


_TARGET = "class or function this config instantiates (Hydra `_target_`)"
_NONFINITE = "NaN/Inf policy: error | mask (keep as NaN, skipped in statistics) | drop (drop those samples)"
_CONDITIONING = ("kinds of conditioning, name -> {_target_: ...} (sciencegen.data.conditioning: State, Coarse, "
                 "Variables, Static); null: unconditional")


# ------------------------------------------------------------------------------------------- dataset


@dataclass
class GRFConfig:
    """``dataset=grf``: periodic Gaussian random fields (:class:`sciencegen.physics.datasets.GRFSource`)."""

    _target_: str = _key(_TARGET)
    name: str = _key("dataset name (store name DATA_ROOT/NAME-HASH.zarr, messages)")
    size: int = _key("grid points per side")
    samples: int = _key("number of samples")
    slope: float = _key("per-mode variance (1 + |k|^2/k0^2)^(-slope/2)")
    k0: float = _key("roll-over wavenumber of the spectrum")
    channels: int = _key("independent channels (variables field, or field0, field1, ...)")
    ndim: int = _key("spatial dims; 1: x; 2: y, x; 3: z, y, x")
    seed: int = _key("sample i depends only on (seed, i)")
    chunk: int = _key("samples per chunk (one generation task); with ar: chunk // length trajectories")
    nonfinite: str = _key(_NONFINITE)
    ar: float | None = _key("null: independent samples; a in (-1, 1): AR(1) trajectories x_{t+1} = a x_t + "
                            "sqrt(1 - a^2) xi on dims (trajectory, time)")
    length: int = _key("time steps per AR(1) trajectory (with ar)")
    conditioning: Any = _key(_CONDITIONING)


@dataclass
class KolmogorovConfig:
    """``dataset=kolmogorov``: 2-D Kolmogorov flow (:class:`sciencegen.physics.datasets.KolmogorovSource`)."""

    _target_: str = _key(_TARGET)
    name: str = _key("dataset name (store name DATA_ROOT/NAME-HASH.zarr, messages)")
    trajectories: int = _key("independent random initial conditions (about 6.5 CPU-s each at the defaults)")
    chunk: int = _key("trajectories simulated together per task (one store chunk)")
    device: str = _key("torch device of the solver: cpu | cuda | cuda:N")
    variables: Any = _key("variables kept, from vorticity, u, v (a name or a list of names)")
    size: int = _key("grid points per side of [0, 2pi)^2")
    viscosity: float = _key("kinematic viscosity")
    drag: float = _key("linear drag coefficient")
    forcing_wavenumber: int = _key("forcing sin(k_f y) in the momentum equation")
    forcing_amplitude: float = _key("amplitude A of the body force A sin(k_f y)")
    dt: float = _key("ETDRK4 step (peak CFL about 0.9)")
    snapshot_interval: float = _key("model time between stored snapshots (vorticity decorrelates in about 2)")
    snapshots: int = _key("snapshots per trajectory")
    spinup: float = _key("model time discarded first")
    initial_rms: float = _key("root-mean-square vorticity of the random initial condition")
    seed: int = _key("trajectory i depends only on (seed, i)")
    nonfinite: str = _key(_NONFINITE)
    conditioning: Any = _key(_CONDITIONING)


@dataclass
class _UserDataConfig:
    """Keys shared by the user-data sources (:mod:`sciencegen.data.sources`)."""

    _target_: str = _key(_TARGET)
    name: str = _key("dataset name (store name DATA_ROOT/NAME-HASH.zarr, messages)")
    path: Any = _key("the data: a path (netcdf: also a glob such as 'era/*.nc', or a list of them)")
    variables: Any = _key("variables, e.g. [t2m, u10]; they become channels in this order")
    sample_dims: Any = _key("dims indexing samples, e.g. [time] or [trajectory, time]")
    field_dims: Any = _key("dims of one field, e.g. [lat, lon] (null: every other dim of the variables)")
    # mappings: typed Any, as a null Optional[Dict] takes no {..} override in OmegaConf 2.3 (omry/omegaconf#1360)
    select: Any = _key("label selection first: {dim: value | [values] | {start: .., stop: ..}} (null: none)")
    periodic: Any = _key("{dim: true|false} (null: a longitude spanning 360 degrees is periodic, nothing else)")
    nonfinite: str = _key(_NONFINITE)
    mask: Any = _key("static mask variable of the files whose nonzero points are invalid (land), or {variable: NAME, "
                     "invalid: nonzero|zero}; null: none (with nonfinite=mask, points NaN in every sample are masked)")
    max_gb: float | None = _key("refuse selected variables larger than this many GB before reading them (null: no "
                                "limit); not part of the store's identity")
    conditioning: Any = _key(_CONDITIONING)


@dataclass
class NetCDFConfig(_UserDataConfig):
    """``dataset=netcdf``: a user netCDF file, glob or list of files (:class:`sciencegen.data.sources.NetCDFSource`)."""

    engine: str | None = _key("xarray backend engine (null: xarray's choice)")


@dataclass
class ZarrConfig(_UserDataConfig):
    """``dataset=zarr``: a user Zarr store (:class:`sciencegen.data.sources.ZarrSource`)."""


# ------------------------------------------------------------------------------------------- model


@dataclass
class UNetConfig:
    """``model=unet``: EDM-preconditioned U-Net (:func:`sciencegen.models.build.edm_unet`)."""

    _target_: str = _key(_TARGET)
    name: str = _key("model name (run directory, messages)")
    preset: str = _key("tiny | small | base | large (sciencegen.models.unet_preset); the keys below override it")
    sigma_data: float = _key("EDM sigma_data: the data are normalised to unit variance")
    in_channels: int | None = _key("from the data (one channel per variable); a different value is an error")
    out_channels: int | None = _key("= in_channels (a denoiser outputs the field)")
    cond_channels: int | None = _key("condition channels (null: from the data, dataset.conditioning)")
    periodic: list[bool] | None = _key("[y, x] circular padding (null: from the dataset; grf: periodic)")
    channels: int | None = _key("base width (null: the preset's)")
    channel_mult: list[int] | None = _key(
        "width per level, e.g. [1, 2, 2]; any grid: padded inside to multiples of 2^(levels-1) (null: the preset's)")
    blocks_per_level: int | None = _key("residual blocks per level (null: the preset's)")
    attention_levels: list[int] | None = _key("levels with self-attention, e.g. [2] (null: the preset's)")
    dropout: float | None = _key("dropout rate (null: the preset's)")
    emb_dim: int | None = _key("noise-embedding width (null: the preset's)")
    padding_mode_nonperiodic: str | None = _key("padding of non-periodic dims: zeros | reflect (null: the preset's)")
    checkpoint: str | None = _key(
        "for generation: a checkpoint file or a run directory (sciencegen-train ignores it)")


@dataclass
class OracleConfig:
    """``model=oracle``: exact denoiser of an analytic dataset (:func:`sciencegen.models.build.oracle_denoiser`)."""

    _target_: str = _key(_TARGET)
    name: str = _key("model name (messages)")
    dataset: Any = _key("dataset config of the law, a mapping (null: the dataset config of the job)")
    checkpoint: str | None = _key("ignored: the oracle has no weights")


# ------------------------------------------------------------------------------------------- train


@dataclass
class EMAConfig:
    """``train.ema``: exponential moving average of the weights."""

    halflife_samples: int | None = _key("EMA half-life in samples (null: use decay)")
    rampup: float | None = _key("half-life = min(halflife_samples, rampup * samples seen); null: off")
    decay: float | None = _key("a fixed per-step decay instead, e.g. 0.999")


@dataclass
class TrainConfig:
    """``train=default|gpu``: training options (:func:`sciencegen.pipelines.train.run_train`)."""

    max_steps: int | None = _key("bound of the run in optimizer steps (counted over resumes; null: none)")
    max_minutes: float | None = _key("wall-clock minutes of the training loop (null: no time bound)")
    batch_size: int = _key("global batch (split evenly over DDP ranks)")
    lr: float = _key("AdamW peak learning rate (after the linear warm-up)")
    weight_decay: float = _key("AdamW weight decay")
    betas: list[float] = _key("AdamW betas [beta1, beta2], each in [0, 1)")
    eps: float = _key("AdamW epsilon")
    warmup_steps: int = _key("linear learning-rate warm-up steps")
    schedule: str = _key("cosine | constant")
    final_lr_ratio: float = _key("lr at the end of the cosine, relative to lr")
    horizon_steps: int | None = _key("cosine horizon in steps (null: the bounds above, whichever ends first)")
    grad_clip: float = _key("max gradient norm (0: off)")
    p_mean: float = _key("noise levels ln(sigma) ~ N(p_mean, p_std^2): mean")
    p_std: float = _key("noise levels ln(sigma) ~ N(p_mean, p_std^2): standard deviation")
    ema: EMAConfig = _key("EMA of the weights (used for figures, generation)")
    holdout: float = _key("fraction of the chunks held out for validation (the last ones)")
    shuffle: bool = _key("shuffle the training samples every epoch")
    num_workers: int = _key("DataLoader worker processes per rank")
    seed: int = _key("seed of initialisation, shuffling and noise")
    threads: int | None = _key("torch CPU threads (null: torch default)")
    device: str = _key("auto (cuda if available) | cpu | cuda | cuda:N")
    precision: str = _key("auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16")
    compile: bool = _key("torch.compile the training forward")
    log_every: int = _key("a row of RUN/metrics.csv (and TensorBoard) every N steps")
    val_every: int = _key("validation loss on the held-out split every N steps (0: only at the end)")
    val_batches: int = _key("batches per validation")
    ckpt_every_steps: int = _key("checkpoint every N steps (0: only at the end)")
    ckpt_every_minutes: float = _key("also checkpoint after this many minutes (0: off)")
    keep: int = _key("checkpoints kept")
    figure_every: int = _key("RUN/figures/step_*.png (EMA samples + spectra) every N steps; 0: only at the end")
    figure_members: int = _key("samples per figure (0: no figures)")
    figure_steps: int = _key("sampler steps of the figure samples")
    figure_sampler: str = _key("sampler of the figure samples (a name of sciencegen.samplers.SAMPLERS)")
    progress: bool = _key("show a progress bar")
    tensorboard: bool = _key("also write TensorBoard scalars to RUN/tensorboard (needs the extra: "
                             "pip install 'sciencegen[tensorboard]')")
    adapt_batch: bool = _key("lower batch_size to a power of two giving >= 2 steps per epoch when the training "
                             "split is that small (false: keep it; an error if it exceeds the split)", True)


# ------------------------------------------------------------------------------------------- sampler


@dataclass
class SamplerConfig:
    """``sampler`` group: a named sampler of :data:`sciencegen.samplers.SAMPLERS` and its options.

    Every option left ``None`` takes the named sampler's value from the registry; see
    ``docs/samplers.md`` for their meaning.
    """

    name: str = _key("sampler name (sciencegen.samplers.SAMPLERS)")
    steps: int = _key("steps of the noise-level grid")
    # options every sampler takes (sciencegen.samplers.registry.COMMON); None: the named sampler's value
    method: str | None = _key("sde | ode | heun (EDM's second-order ODE solver, two calls per step)", None)
    order: int | None = _key("1 | 2: DPM-Solver++(2M) multistep for sde/ode (data form)", None)
    form: str | None = _key("data (DPM-Solver++ form) | score (the seed paper's form)", None)
    grid: str | None = _key("noise-level grid (sciencegen.diffusion.GRIDS), e.g. geometric | karras", None)
    sigma_min: float | None = _key("smallest noise level of the grid", None)
    sigma_max: float | None = _key("largest noise level of the grid", None)
    max_batch: int | None = _key("micro-batch of one denoiser call (items)", None)
    blocks: int | None = _key("equal log-SNR blocks (Picard windows never cross a block end)", None)
    corrector_steps: int | None = _key("Langevin steps at interior block ends", None)
    corrector_size: float | None = _key("Langevin step = corrector_size * sigma^2", None)
    churn: float | None = _key("heun: EDM S_churn (stochastic Heun when > 0)", None)
    churn_min: float | None = _key("heun: churn only where churn_min <= sigma <= churn_max (EDM S_tmin)", None)
    churn_max: float | None = _key("heun: upper end of the churn range (EDM S_tmax)", None)
    churn_noise: float | None = _key("heun: EDM S_noise", None)
    # Picard-only options (sciencegen.samplers.registry.PICARD)
    lag: str | None = _key("Picard: F (lag the denoiser only) | step (lag the whole increment, ParaDiGMS)", None)
    tol: float | None = _key("Picard: convergence tolerance of a point's change", None)
    window: int | None = _key("Picard: steps in flight per member (null in the registry: the whole block)", None)
    accept: str | None = _key("Picard: prefix (slide past the converged prefix) | block (whole block at once)",
                              None)
    max_iters: int | None = _key("Picard: fixed iteration count per block (seed paper's K; registry null: "
                                 "until tol)", None)
    patience: int | None = _key("Picard: rounds of growing residual before a sequential fallback", None)
    norm: str | None = _key("Picard: rms | fourier: how a point's change is measured", None)
    newton: str | None = _key("Picard: none | spectral | auto: Newton terms in the window's scan (Fourier-shell "
                              "Jacobian); auto: spectral unless the denoiser opts out or conditions are given", None)
    _target_: str = _key("the sampler class (a sampler of your own: same interface)", "sciencegen.samplers.Sampler")


def sampler_options(cfg: Any) -> dict[str, Any]:
    """The options set in a ``sampler`` config (those not ``None``), for :func:`sciencegen.sample`."""
    get = cfg.get if hasattr(cfg, "get") else lambda k, d=None: getattr(cfg, k, d)
    return {f.name: get(f.name) for f in fields(SamplerConfig)
            if f.name not in ("_target_", "name", "steps") and get(f.name) is not None}


# ------------------------------------------------------------------------------------------- generate, evaluate


@dataclass
class SDEConfig:
    """``sde`` group: the forward process and the noise range every sampler's grid spans."""

    name: str = _key("the forward process: vp (variance-preserving Ornstein-Uhlenbeck, EDM noise levels)")
    sigma_min: float = _key("smallest noise level of the grid before the final step to 0 (EDM units)")
    sigma_max: float = _key("largest noise level: where sampling starts from pure noise (EDM units)")


@dataclass
class GenerateConfig:
    """``generate=default``: ensemble generation (:func:`sciencegen.pipelines.generate.run_generate`)."""

    members: int = _key("ensemble size; member i depends only on (seed, i) (of each condition: (seed, c, i))")
    conditions: int = _key("a dataset with conditioning: cases taken from the held-out data (ignored with "
                           "condition.path: every case of the file)")
    lead_times: int | None = _key("forecast rollouts of a state-conditioned dataset: each member fed its own "
                                  "output, this many times (null: one step, no lead_time dim)")
    batch_size: int = _key("members sampled together (a Picard round evaluates window x batch points)")
    seed: int = _key("member i depends only on (seed, i)")
    noise_stream: str | None = _key("counter (integer tensor ops on the sampling device) | cpu (a CPU generator per "
                                    "(seed, member, step)) | null: counter for a new store; resuming, the stream "
                                    "the store records (cpu if it records none)")
    shard: str | None = _key("i/n: own the i-th of n contiguous, chunk-aligned slices of members (0-based); "
                             "null: from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT when set, else all")
    device: str = _key("auto (cuda if available) | cpu | cuda | cuda:N")
    dtype: str = _key("float32 | float64")
    threads: int | None = _key("torch CPU threads (null: torch default)")
    distributed: Any = _key("auto: split each round's batch over torch.distributed ranks under torchrun | false")
    dask: str | None = _key("Dask scheduler address for the writes (null: a running client, else a writer thread)")
    progress: bool = _key("show a progress bar")
    verify: bool = _key("on a rerun, read back every chunk flagged complete and regenerate the ones that cannot be "
                        "decoded (a corrupt or truncated chunk file)")


@dataclass
class EvaluateConfig:
    """``evaluate=default``: evaluation options (:func:`sciencegen.pipelines.evaluate.run_evaluate`)."""

    bins: int = _key("histogram bins over the joint value range of samples and reference")
    max_lag: int | None = _key(
        "largest separation shell of the two-point correlation (null: half the smallest side)")
    dask: str | None = _key(
        "Dask scheduler address (null: a running distributed client if any, else local threads)")
    threads: int | None = _key("local Dask threads (null: one per core)")
    figures: bool = _key("write samples.png, spectrum.png, histogram.png, correlation.png")
    panel: int = _key("fields of each kind shown in samples.png")


# ------------------------------------------------------------------------------------------- registration

#: ``(group, name) -> schema``: stored as ``schema/<group>/<name>``; a group option names it in its defaults
SCHEMAS: dict[tuple[str, str], type] = {
    ("dataset", "grf"): GRFConfig,
    ("dataset", "kolmogorov"): KolmogorovConfig,
    ("dataset", "netcdf"): NetCDFConfig,
    ("dataset", "zarr"): ZarrConfig,
    ("model", "unet"): UNetConfig,
    ("model", "oracle"): OracleConfig,
    ("sde", "vp"): SDEConfig,
    ("train", "base"): TrainConfig,
    ("sampler", "base"): SamplerConfig,
    ("generate", "base"): GenerateConfig,
    ("evaluate", "base"): EvaluateConfig,
}


_registered = False


def register() -> None:
    """Store the schemas in Hydra's ConfigStore as ``schema/<group>/<name>`` (idempotent)."""
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for (group, name), node in SCHEMAS.items():
        cs.store(group=f"schema/{group}", name=name, node=node)
    _registered = True


# ------------------------------------------------------------------------------------------- one config path


def config_dir() -> Path:
    """The folder of the shipped Hydra configs: ``sciencegen/conf`` inside an installed wheel (the build copies
    the repository's top-level ``conf/`` there), the repository's ``conf/`` in a source checkout or an editable
    install. Also registers the schemas the configs name (:func:`register`), so that Hydra can compose
    from the folder at once."""
    register()
    here = Path(__file__).resolve().parent
    packaged = here / "conf"
    return packaged if (packaged / "generate.yaml").is_file() else here.parent / "conf"


def plain(cfg: Any, error: type[Exception] = ValueError) -> Any:
    """Resolved plain containers (dict, list, scalars) of a Hydra/OmegaConf config, a mapping or a sequence.

    A ``???`` (mandatory) value left unset raises ``error`` with one line naming the key.
    """
    from omegaconf import DictConfig, ListConfig, OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    if isinstance(cfg, (DictConfig, ListConfig)):
        try:
            return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        except MissingMandatoryValue as exc:
            key = getattr(exc, "full_key", None) or str(exc).split("\n")[0]
            raise error(f"missing mandatory value: {key} (set it on the command line, e.g. {key}=...)") from None
    if isinstance(cfg, Mapping):
        return {k: plain(v, error) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [plain(v, error) for v in cfg]
    return cfg


def instantiate(cfg: Any, what: str, error: type[Exception] = ValueError, **kwargs: Any) -> Any:
    """Instantiate the ``_target_`` of ``cfg`` (plain containers passed on); a mistake becomes one line.

    ``what`` names the config in the message (``"sampler picard_sde"``, ``"dataset grf"``). An error of
    ``error``'s type raised by the target itself passes through unchanged; an unknown ``_target_``, a wrong
    or missing argument, or a ``ValueError``/``TypeError`` of the target becomes ``error("WHAT: reason")``.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    conf = plain(cfg, error)
    if not isinstance(conf, Mapping) or "_target_" not in conf:
        raise error(f"{what}: the config has no _target_ (the class or function it builds)")
    try:
        return hydra_instantiate(conf, _convert_="all", **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, error):
            raise cause from None
        if isinstance(cause, (ValueError, TypeError)):
            msg = str(cause).split(": ", 1)[-1] if "argument" in str(cause) else str(cause)
        else:
            msg = str(exc).splitlines()[0]
        raise error(f"{what}: {msg}") from None
