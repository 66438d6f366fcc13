"""Analytic targets with exact laws: Gaussian random fields, their exact conditional laws, Gaussian mixtures.

* :mod:`~sciencegen.targets.fields`: :class:`GaussianRandomField` and :class:`GaussianMixture` (exact denoisers
  and samples), the exact conditional laws of the GRF (:class:`CoarseGRF`, :class:`AR1GRF`, :class:`StaticGRF`),
  :func:`radial_spectrum` and :func:`spectral_error`;
* :mod:`~sciencegen.targets.observed`: :class:`ObservedGRF`, the exact posterior of the GRF given linear
  Gaussian observations ``y = H x + eps`` (dense Gaussian conditioning, or the Wiener filter for a full mask).

The package imports only torch.
"""

from .fields import AR1GRF, CoarseGRF, GaussianMixture, GaussianRandomField, StaticGRF, radial_spectrum, spectral_error
from .observed import MAX_OBSERVATIONS, ObservedGRF

__all__ = ["AR1GRF", "MAX_OBSERVATIONS", "CoarseGRF", "GaussianMixture", "GaussianRandomField", "ObservedGRF",
           "StaticGRF", "radial_spectrum", "spectral_error"]
