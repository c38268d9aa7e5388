"""splatshot_jax: one photo -> a 3D Gaussian Splatting head avatar (SplatShot, in JAX)."""

__version__ = "0.1.0"
