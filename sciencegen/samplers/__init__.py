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
from .noise import NoiseSeed, condition_seed
from .paradigms import paradigms_walk
from .picard import picard_walk
from .registry import OPTIONS, SAMPLERS, resolve, twin
from .sequential import sequential_walk

__all__ = [
    "OPTIONS",
    "SAMPLERS",
    "SampleResult",
    "Conditions",
    "Guided",
    "NoiseSeed",
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
    "paradigms_walk",
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
