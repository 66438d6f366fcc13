"""Samplers: the step-table engine, its named configurations and observation guidance."""

from .api import Sampler, SampleResult, check_sampler, sample, sampler_table, sequential_rounds
from .engine import Conditions, WalkStats, call_denoiser
from .guidance import (
    Guided,
    ObservationOperator,
    Observations,
    block_operator,
    draw_observations,
    gridded_observations,
    mask_operator,
    point_operator,
    random_mask,
)
from .noise import condition_seed
from .picard import picard_walk
from .registry import SAMPLERS, resolve, twin
from .sequential import sequential_walk

__all__ = [
    "SAMPLERS",
    "SampleResult",
    "Conditions",
    "Guided",
    "ObservationOperator",
    "Observations",
    "Sampler",
    "WalkStats",
    "block_operator",
    "call_denoiser",
    "check_sampler",
    "condition_seed",
    "draw_observations",
    "gridded_observations",
    "mask_operator",
    "picard_walk",
    "point_operator",
    "random_mask",
    "resolve",
    "sample",
    "sampler_table",
    "sequential_rounds",
    "sequential_walk",
    "twin",
]
