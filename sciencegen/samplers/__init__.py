"""Samplers: the step-table engine and its named configurations."""

from .api import Sampler, SampleResult, check_sampler, sample, sampler_table, sequential_rounds
from .engine import Conditions, WalkStats, call_denoiser
from .noise import condition_seed
from .picard import picard_walk
from .registry import SAMPLERS, resolve, twin
from .sequential import sequential_walk

__all__ = [
    "SAMPLERS",
    "SampleResult",
    "Conditions",
    "Sampler",
    "WalkStats",
    "call_denoiser",
    "check_sampler",
    "condition_seed",
    "picard_walk",
    "resolve",
    "sample",
    "sampler_table",
    "sequential_rounds",
    "sequential_walk",
    "twin",
]
