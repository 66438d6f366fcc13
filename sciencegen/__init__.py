"""sciencegen: score-based diffusion ensembles of gridded scientific fields with parallel-in-time Picard samplers."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

__all__ = ["SAMPLERS", "SampleResult", "__version__", "diffusion", "sample", "targets"]

# imported on first use, so that `import sciencegen` (every console script) does not load torch up front:
# a command fails fast on a config error, and Ctrl-C while starting is one line, not an import traceback
_LAZY = {"SAMPLERS": "sciencegen.samplers", "SampleResult": "sciencegen.samplers", "sample": "sciencegen.samplers",
         "diffusion": None, "targets": None}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'sciencegen' has no attribute {name!r}")
    module = _LAZY[name]
    value = importlib.import_module(f"sciencegen.{name}") if module is None else getattr(
        importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
