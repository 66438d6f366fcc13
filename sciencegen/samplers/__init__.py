"""Samplers: the step-table engine and its named configurations."""

from .api import Sampler, SampleResult, check_sampler, sample, sampler_table
from .engine import WalkStats, evaluate, picard_walk, sequential_walk
from .registry import SAMPLERS, resolve, twin

__all__ = [
    "SAMPLERS",
    "SampleResult",
    "Sampler",
    "WalkStats",
    "check_sampler",
    "evaluate",
    "picard_walk",
    "resolve",
    "sample",
    "sampler_table",
    "sequential_walk",
    "twin",
]
