"""Analysis of generated ensembles: spectra, moments, distributions, correlation and ensemble scores.

Latitude-longitude grids (:func:`grid_geometry`) get area weights (``weights=`` of the one-point statistics and
scores), zonal spectra by latitude band (:func:`row_spectrum`) and correlations against great-circle distance
(:func:`great_circle_correlation`); masked fields the masked correlation estimator (:func:`masked_correlation`).

Every function takes xarray objects, numpy- or dask-backed, with named dims (``dims=`` arguments, never axis
numbers) and works lazily chunk by chunk on dask input (results are small and stay lazy until computed).
Importing this package registers the ``.sciencegen`` accessor on ``xarray.Dataset`` and ``xarray.DataArray``.
"""

from . import accessor  # noqa: F401  (registers the .sciencegen accessor)
from .accessor import default_field_dims
from .correlation import masked_correlation, spatial_correlation
from .geometry import Geometry, grid_geometry
from .moments import histogram, moment_scalars, moments, wasserstein1
from .scores import crps_ensemble, crps_gaussian, rank_histogram, spread_skill
from .spectra import energy_spectrum, enstrophy_spectrum, isotropic_spectrum
from .sphere import great_circle_correlation
from .zonal import row_spectrum

__all__ = [
    "Geometry",
    "crps_ensemble",
    "crps_gaussian",
    "default_field_dims",
    "energy_spectrum",
    "enstrophy_spectrum",
    "great_circle_correlation",
    "grid_geometry",
    "histogram",
    "isotropic_spectrum",
    "masked_correlation",
    "moment_scalars",
    "moments",
    "rank_histogram",
    "row_spectrum",
    "spatial_correlation",
    "spread_skill",
    "wasserstein1",
]
