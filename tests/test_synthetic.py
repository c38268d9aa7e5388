"""Tests for splatshot_jax.synthetic: the head sits in every view, is deterministic, and renders."""

import jax.numpy as jnp
import numpy as np

from splatshot_jax import cameras as C
from splatshot_jax import synthetic
from splatshot_jax.gaussians import init_from_points


def test_scene_geometry():
  s = synthetic.make_head_scene(1000, 16, width=96, height=96, sh_degree=1)
  g = s.gaussians
  assert g.means.shape == (1000, 3) and g.sh.shape == (1000, 4, 3) and s.labels.shape == (1000,)
  assert len(s.cameras) == 16 and (s.cameras.width, s.cameras.height) == (96, 96)
  assert s.points.shape == (500, 3) and not s.colors.any()
  assert set(np.unique(s.labels)) == set(range(len(synthetic.PARTS)))
  # The head (not the neck, which leaves the frame like shoulders in photos) projects inside
  # every image, in front of the camera.
  head = s.labels != synthetic.PARTS.index("neck")
  uv, depth = C.project_points(s.cameras, g.means[head])
  uv, depth = np.asarray(uv), np.asarray(depth)
  assert depth.min() > 0.3 and uv.min() > 0 and uv.max() < 96
  # Rig looks at the head centre.
  c, _ = C.project_points(s.cameras, jnp.zeros((1, 3)))
  np.testing.assert_allclose(np.asarray(c)[:, 0], 48.0, atol=1e-3)
  # Surfel normals (third rotation column) point away from the head centre.
  n = np.asarray(C.quat_to_rotmat(g.quats))[:, :, 2]
  assert np.mean(np.sum(n * np.asarray(g.means), -1) > 0) > 0.99
  # Deterministic in the seed.
  t = synthetic.make_head_scene(1000, 16, width=96, height=96, sh_degree=1)
  np.testing.assert_array_equal(np.asarray(g.means), np.asarray(t.gaussians.means))
  np.testing.assert_array_equal(s.points, t.points)
  init = init_from_points(s.points, s.colors)
  assert init.num == 500


def test_scene_renders():
  s = synthetic.make_head_scene(600, 2, width=48, height=48, render_images=True,
                                background=(1.0, 1.0, 1.0))
  assert s.images.shape == (2, 48, 48, 3)
  centre, corner = s.images[:, 20:28, 20:28], s.images[:, :3, :3]
  np.testing.assert_allclose(corner, 1.0, atol=1e-3)  # white background
  assert np.all(centre.mean((1, 2, 3)) < 0.9)  # the face covers the middle
