"""sciencegen: score-based diffusion ensembles of gridded scientific fields with parallel-in-time Picard samplers."""

from . import diffusion, targets
from .samplers import SAMPLERS, SampleResult, sample

__version__ = "0.1.0"

__all__ = ["SAMPLERS", "SampleResult", "__version__", "diffusion", "sample", "targets"]
