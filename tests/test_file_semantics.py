"""File formats checked by meaning, not round trip: an independent reader/writer (plyfile) and known values.

A writer and a reader that share a wrong field order or transform pass a round trip; here every field is pinned:
3DGS PLY rot_0..3 = (w, x, y, z), `opacity` is the logit, `scale_i` the log standard deviation, f_dc_c the DC
coefficient of channel c, f_rest_j with j = c·(K − 1) + i the i-th higher coefficient of channel c (channel-major,
as 3DGS's `save_ply`); point clouds x y z / uchar red green blue; cameras.json world-to-camera OpenCV 4x4 and K.
"""

import json

import jax.numpy as jnp
import numpy as np
import pytest

plyfile = pytest.importorskip("plyfile")

from splatshot_jax.jobs import outputs  # noqa: E402
from splatshot_jax.cameras import Camera, look_at, project_points  # noqa: E402
from splatshot_jax.gaussians import Gaussians  # noqa: E402
from splatshot_jax.io import ply  # noqa: E402

N, DEGREE = 5, 3
K_SH = (DEGREE + 1) ** 2


def _known():
  """Gaussians with recognisable values: quats (w, x, y, z) = (0.9, 0.1, 0.2, 0.3) + row, opacity 0.7,
  σ = (0.01, 0.02, 0.04), sh[n, k, c] = 100 n + 10 k + c (k < 16, c < 3, so every entry is distinct)."""
  n = np.arange(N)[:, None, None]
  k = np.arange(K_SH)[None, :, None]
  c = np.arange(3)[None, None, :]
  return Gaussians(
      means=np.stack([np.arange(N) + 0.5, -np.arange(N) * 1.0, np.full(N, 3.0)], -1).astype(np.float32),
      log_scales=np.tile(np.log(np.float32([0.01, 0.02, 0.04])), (N, 1)),
      quats=(np.float32([[0.9, 0.1, 0.2, 0.3]]) + np.arange(N, dtype=np.float32)[:, None] * 0.01),
      opacity_logits=np.full(N, np.log(0.7 / 0.3), np.float32),
      sh=(100.0 * n + 10.0 * k + c).astype(np.float32),
  )


def test_gaussians_ply_fields_by_meaning(tmp_path):
  g = _known()
  path = tmp_path / "g.ply"
  ply.write_gaussians(path, g)
  data = plyfile.PlyData.read(str(path))
  assert data.elements[0].name == "vertex" and data.elements[0].count == N
  assert not data.text and data.byte_order == "<"
  v = data["vertex"].data
  assert all(v.dtype[name] == np.dtype("<f4") for name in v.dtype.names)
  np.testing.assert_array_equal(v["x"], g.means[:, 0])
  np.testing.assert_array_equal(v["z"], 3.0)
  # Quaternion scalar-first.
  np.testing.assert_allclose(v["rot_0"], 0.9 + 0.01 * np.arange(N), rtol=1e-6)
  np.testing.assert_allclose(v["rot_3"], 0.3 + 0.01 * np.arange(N), rtol=1e-6)
  # opacity is the logit, scales are logs of standard deviations.
  np.testing.assert_allclose(1 / (1 + np.exp(-v["opacity"])), 0.7, rtol=1e-6)
  for i, s in enumerate((0.01, 0.02, 0.04)):
    np.testing.assert_allclose(np.exp(v[f"scale_{i}"]), s, rtol=1e-6)
  for c in range(3):
    np.testing.assert_array_equal(v[f"f_dc_{c}"], 100.0 * np.arange(N) + c)
    for i in range(K_SH - 1):
      # f_rest_{c(K-1)+i} = coefficient 1 + i of channel c.
      np.testing.assert_array_equal(v[f"f_rest_{c * (K_SH - 1) + i}"], 100.0 * np.arange(N) + 10 * (1 + i) + c)
  assert [p.name for p in data["vertex"].properties][-8:] == ["opacity", "scale_0", "scale_1", "scale_2",
                                                              "rot_0", "rot_1", "rot_2", "rot_3"]


@pytest.mark.parametrize("text,byte_order", [(False, "<"), (False, ">"), (True, "=")])
def test_read_gaussians_from_an_independent_writer(tmp_path, text, byte_order):
  """A 3DGS file written by plyfile (binary LE/BE and ascii, with a shuffled property order) reads as those values."""
  g = _known()
  sh = np.asarray(g.sh)
  cols = {"x": g.means[:, 0], "y": g.means[:, 1], "z": g.means[:, 2], "opacity": g.opacity_logits}
  for c in range(3):
    cols[f"f_dc_{c}"] = sh[:, 0, c]
    for i in range(K_SH - 1):
      cols[f"f_rest_{c * (K_SH - 1) + i}"] = sh[:, 1 + i, c]
  for i in range(3):
    cols[f"scale_{i}"] = g.log_scales[:, i]
  for i in range(4):
    cols[f"rot_{i}"] = g.quats[:, i]
  names = list(cols)[::-1]  # readers look properties up by name, not position
  arr = np.empty(N, [(n, "f4") for n in names])
  for n in names:
    arr[n] = cols[n]
  path = tmp_path / "ext.ply"
  plyfile.PlyData([plyfile.PlyElement.describe(arr, "vertex")], text=text, byte_order=byte_order).write(str(path))
  h = ply.read_gaussians(path)
  np.testing.assert_array_equal(np.asarray(h.quats)[:, 0], g.quats[:, 0])  # w first
  np.testing.assert_allclose(np.asarray(h.opacities), 0.7, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(h.scales), np.exp(g.log_scales), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(h.sh), sh)
  np.testing.assert_array_equal(np.asarray(h.means), g.means)


def test_points_ply_fields(tmp_path):
  pts = np.float32([[0, 1, 2], [3, 4, 5], [-1, -2, -3]])
  col = np.array([[0.0, 0.5, 1.0], [1 / 255, 254.4 / 255, 254.6 / 255], [0.2, 0.3, 0.4]])
  path = tmp_path / "p.ply"
  ply.write_points(path, pts, col)
  v = plyfile.PlyData.read(str(path))["vertex"].data
  np.testing.assert_array_equal(np.stack([v["x"], v["y"], v["z"]], -1), pts)
  assert v.dtype["red"] == np.uint8
  np.testing.assert_array_equal(np.stack([v["red"], v["green"], v["blue"]], -1)[:2], [[0, 128, 255], [1, 254, 255]])
  # And an independent file with ushort colours: scaled by 65535, not 255.
  arr = np.empty(3, [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u2"), ("green", "u2"), ("blue", "u2")])
  for i, n in enumerate("xyz"):
    arr[n] = pts[:, i]
  arr["red"], arr["green"], arr["blue"] = 65535, 0, 32768
  plyfile.PlyData([plyfile.PlyElement.describe(arr, "vertex")], text=True).write(str(tmp_path / "u.ply"))
  p, c = ply.read_points(tmp_path / "u.ply")
  np.testing.assert_array_equal(p, pts)
  np.testing.assert_allclose(c, np.tile([1.0, 0.0, 32768 / 65535], (3, 1)), rtol=1e-6)


def test_cameras_json_is_world_to_camera_opencv(tmp_path):
  """cameras.json: a world point projected with the file's viewmat and K lands where the renderer's camera puts it."""
  eyes = np.float32([[0.3, -0.2, 3.0], [-2.0, 0.5, 2.0]])
  vms = np.stack([np.asarray(look_at(jnp.asarray(e), jnp.zeros(3))) for e in eyes])
  Ks = np.float32([[[50, 0, 20.5], [0, 55, 14.25], [0, 0, 1]], [[40, 0, 19], [0, 41, 16], [0, 0, 1]]])
  cams = Camera(jnp.asarray(vms), jnp.asarray(Ks), 40, 30)
  outputs.write_json(tmp_path / "cameras.json", outputs.cameras_to_json(cams))
  d = json.loads((tmp_path / "cameras.json").read_text())
  assert (d["width"], d["height"]) == (40, 30)
  pts = np.float32([[0.1, 0.2, -0.1], [0.0, 0.0, 0.0], [-0.3, 0.1, 0.2]])
  for i, view in enumerate(d["views"]):
    vm, K = np.asarray(view["viewmat"]), np.asarray(view["K"])
    assert K[0, 0] == Ks[i, 0, 0] and K[0, 2] == Ks[i, 0, 2] and K[1, 2] == Ks[i, 1, 2] and K[2, 2] == 1
    np.testing.assert_allclose(vm[3], [0, 0, 0, 1])
    # Camera centre from the file: c = −Rᵀ t equals the eye it was built from.
    np.testing.assert_allclose(-vm[:3, :3].T @ vm[:3, 3], eyes[i], atol=1e-5)
    p_cam = pts @ vm[:3, :3].T + vm[:3, 3]
    assert np.all(p_cam[:, 2] > 0)  # OpenCV: +z in front
    uv = (p_cam @ K.T)[:, :2] / p_cam[:, 2:]
    ref, _ = project_points(cams[i], jnp.asarray(pts))
    np.testing.assert_allclose(uv, np.asarray(ref), atol=1e-4)
