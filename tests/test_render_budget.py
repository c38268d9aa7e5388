"""Scene-sized pair budget (`render/budget.py`, `tiles.scene_pair_budget`) vs per-view renders."""

import jax.numpy as jnp
import numpy as np

from splatshot_jax.cameras import Camera
from splatshot_jax.gaussians import Gaussians
from splatshot_jax.render import render_views
from splatshot_jax.render.budget import measure_pair_budget
from splatshot_jax.render.tiles import scene_pair_budget

W, H, N = 40, 32, 120


def _scene(rng):
  return Gaussians(
      means=jnp.asarray(rng.normal(size=(N, 3)) * [0.4, 0.35, 0.3], jnp.float32),
      log_scales=jnp.asarray(rng.uniform(-3.0, -1.5, size=(N, 3)), jnp.float32),
      quats=jnp.asarray(rng.normal(size=(N, 4)), jnp.float32),
      opacity_logits=jnp.asarray(rng.normal(size=(N,)), jnp.float32),
      sh=jnp.asarray(rng.normal(size=(N, 1, 3)) * 0.3, jnp.float32))


def _cameras(dist):
  vms = np.stack([np.eye(4)] * len(dist))
  vms[:, 2, 3] = dist  # a nearer camera sees bigger splats: more pairs
  K = np.array([[50, 0, W / 2], [0, 50, H / 2], [0, 0, 1]])
  return Camera(jnp.asarray(vms, jnp.float32), jnp.asarray(np.stack([K] * len(dist)), jnp.float32),
                W, H)


def test_scene_pair_budget_rounds_margin_up_to_power_of_two():
  assert scene_pair_budget(jnp.asarray([100, 400]), 1.25) == 512
  assert scene_pair_budget(jnp.asarray([100, 410]), 1.25) == 1024  # 512.5 -> 1024
  assert scene_pair_budget(0) == 1


def test_measure_pair_budget_covers_the_busiest_view():
  rng = np.random.default_rng(0)
  g, cams = _scene(rng), _cameras([3.0, 1.5])
  kw = dict(tile_size=8, backend="xla")
  need = np.asarray(render_views(g, cams, pair_budget=64 * N, **kw).overflow.num_pairs)
  assert need[1] > need[0] > 0
  budget = measure_pair_budget(g, cams, margin=1.5, **kw)
  assert budget == scene_pair_budget(need, 1.5) and budget <= 3 * need.max()
  out = render_views(g, cams, pair_budget=budget, **kw)
  assert int(jnp.max(out.overflow.total)) == 0
