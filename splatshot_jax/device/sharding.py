"""Views sharded over devices: one `jax.sharding.Mesh` with a "views" axis, used by the prior and the refit.

  mesh = make_mesh(config.mesh.views)          # -1: all local devices; 1 (or a 1-device host): None
  prior = shard_prior(prior, mesh)             # eps and decode (and decode's VJP) split the V views
  FitConfig(views_per_iter=B, mesh=mesh)       # the refit splits each iteration's B views, gradients summed

Everything stays under the one jitted `splatshot_step` (no pmap): the split is a `jax.shard_map` over the views
axis with every other input replicated, so each device runs the unchanged per-view code (and the prior's own
view chunking) on its V/D views. Differentiating through it sums the replicated inputs' cotangents across
devices (`psum`), which is exactly the gradient of a sum of per-view losses.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

VIEWS = "views"
Pytree = Any


def make_mesh(views: int = -1) -> Mesh | None:
  """A 1-D mesh over `views` local devices (-1: all of them). None when that is one device (nothing to split).

  Raises ValueError naming config.mesh.views when more devices are asked for than there are.
  """
  devices = jax.local_devices()
  n = len(devices) if views == -1 else int(views)
  if n < 1 or n > len(devices):
    raise ValueError(f"config.mesh.views={views}: expected -1 (all) or 1..{len(devices)} local devices "
                     f"({devices[0].platform})")
  if n == 1:
    return None
  return Mesh(devices[:n], (VIEWS,))


def num_devices(mesh: Mesh | None) -> int:
  return 1 if mesh is None else mesh.size


def views_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (views) axis split over the mesh, the rest whole."""
  return NamedSharding(mesh, P(VIEWS))


def check_divisible(num_views: int, mesh: Mesh | None, what: str) -> None:
  if mesh is not None and num_views % mesh.size:
    raise ValueError(f"{what}: {num_views} views do not split over {mesh.size} devices (config.mesh.views); "
                     f"use a device count that divides {num_views}")


def over_views(fn: Callable, mesh: Mesh | None, sharded: tuple[bool, ...]) -> Callable:
  """fn(*args) with the args marked True in `sharded` split along their leading (views) axis over the mesh and the
  others replicated; fn's outputs carry the views axis first and come back split the same way. mesh None: fn.

  fn must be per-view (view i of the output depends only on view i of the sharded inputs), so each device can
  run it on its own views.
  """
  if mesh is None:
    return fn
  specs = tuple(P(VIEWS) if s else P() for s in sharded)
  # check_vma off: the rasterizer's and the UNet's loops start their carries from replicated constants, which the
  # varying-axis checker rejects; the computation is per device either way (the tests compare with one device).
  return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=P(VIEWS), check_vma=False)


@struct.dataclass
class ShardedPrior:
  """A `Prior` whose eps and decode run on V/D views per device of `mesh` (same results as `prior`).

  The decode VJP the step takes (`jax.vjp(prior.decode, x0)`) is split the same way: shard_map is differentiable
  and the wrapped prior's own custom VJP runs per device. V must be divisible by the mesh size.
  """

  prior: Pytree
  mesh: Mesh = struct.field(pytree_node=False)

  def eps(self, z, t, cond):
    check_divisible(z.shape[0], self.mesh, "prior.eps")
    fn = over_views(lambda pr, zz, tt, cc: pr.eps(zz, tt, cc), self.mesh, (False, True, False, True))
    return fn(self.prior, z, t, cond)

  def encode(self, images, rng=None):
    # Once per run, outside the step: left whole so the posterior sample is the unsharded prior's, draw for draw.
    return self.prior.encode(images, rng)

  def decode(self, latents):
    check_divisible(latents.shape[0], self.mesh, "prior.decode")
    return over_views(lambda pr, z: pr.decode(z), self.mesh, (False, True))(self.prior, latents)

  @property
  def schedule(self):
    return getattr(self.prior, "schedule", None)


def shard_prior(prior: Pytree, mesh: Mesh | None) -> Pytree:
  """`ShardedPrior(prior, mesh)`, or prior itself when mesh is None."""
  return prior if mesh is None else ShardedPrior(prior, mesh)


def put_views(tree: Pytree, mesh: Mesh | None) -> Pytree:
  """Places every array leaf of `tree` (leading views axis) split over the mesh; mesh None: unchanged."""
  if mesh is None:
    return tree
  return jax.tree.map(lambda x: jax.device_put(x, views_sharding(mesh)), tree)
