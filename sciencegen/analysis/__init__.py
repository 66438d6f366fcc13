"""Analysis of generated ensembles: spectra, moments, distributions, correlation and ensemble scores.

Every function takes xarray objects, numpy- or dask-backed, with named dims (``dims=`` arguments, never axis
numbers) and works lazily chunk by chunk on dask input (results are small and stay lazy until computed).
Importing this package registers the ``.sciencegen`` accessor on ``xarray.Dataset`` and ``xarray.DataArray``.
"""

from . import accessor  # noqa: F401  (registers the .sciencegen accessor)
from .accessor import default_field_dims
from .correlation import spatial_correlation
from .moments import histogram, moment_scalars, moments, wasserstein1
from .scores import crps_ensemble, crps_gaussian, rank_histogram, spread_skill
from .spectra import energy_spectrum, enstrophy_spectrum, isotropic_spectrum

__all__ = [
    "crps_ensemble",
    "crps_gaussian",
    "default_field_dims",
    "energy_spectrum",
    "enstrophy_spectrum",
    "histogram",
    "isotropic_spectrum",
    "moment_scalars",
    "moments",
    "rank_histogram",
    "spatial_correlation",
    "spread_skill",
    "wasserstein1",
]
