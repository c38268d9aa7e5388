"""Diffusion priors the SplatShot step can use: anything with `eps`, `encode`, `decode` (see `base.Prior`)."""

from splatshot_jax.priors.base import Prior
from splatshot_jax.priors.analytic import AnalyticCond, AnalyticPrior, make_analytic_prior

__all__ = ["Prior", "AnalyticPrior", "AnalyticCond", "make_analytic_prior"]
