"""Tests for splatshot_jax.io.ply: 3DGS layout round trip, point clouds, errors naming the file."""

import os
from pathlib import Path

import jax
import numpy as np
import pytest

from splatshot_jax import gaussians as gs
from splatshot_jax.io import ply

SHARED = Path(os.environ.get("SPLATSHOT_SHARED",
                             Path(__file__).resolve().parents[1].parent / "shared"))
NERSEMBLE_128 = SHARED / "data/multiview/nersemble-128-16views"


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_gaussians_round_trip(tmp_path, degree):
  g = gs.random_gaussians(jax.random.PRNGKey(degree), 37, sh_degree=degree)
  path = tmp_path / "g.ply"
  ply.write_gaussians(path, g)
  h = ply.read_gaussians(path)
  for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(h)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert [p.name for p in tmp_path.iterdir()] == ["g.ply"]  # no temp file left behind


def test_gaussians_layout_is_3dgs(tmp_path):
  """Header order and channel-major f_rest exactly as GaussianModel.save_ply writes them."""
  g = gs.random_gaussians(jax.random.PRNGKey(0), 5, sh_degree=1)
  path = tmp_path / "g.ply"
  ply.write_gaussians(path, g)
  data = path.read_bytes()
  header = data[:data.index(b"end_header\n")].decode().splitlines()
  props = [line.split()[2] for line in header if line.startswith("property")]
  assert header[1] == "format binary_little_endian 1.0"
  assert props == (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                   + [f"f_rest_{i}" for i in range(9)] + ["opacity"]
                   + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)])
  assert all(line.startswith("property float ") for line in header if "property" in line)
  v = ply.read_ply(path)["vertex"]
  sh = np.asarray(g.sh)
  # f_rest_j = sh[1 + j % 3, j // 3]: channel c, coefficient i -> index c * (K-1) + i.
  for c in range(3):
    for i in range(3):
      np.testing.assert_array_equal(v[f"f_rest_{c * 3 + i}"], sh[:, 1 + i, c])


def test_points_round_trip_binary_and_ascii(tmp_path):
  rs = np.random.default_rng(0)
  pts = rs.normal(size=(20, 3)).astype(np.float32)
  col = rs.integers(0, 256, (20, 3), dtype=np.uint8)
  ply.write_points(tmp_path / "b.ply", pts, col, normals=pts)
  p, c = ply.read_points(tmp_path / "b.ply")
  np.testing.assert_array_equal(p, pts)
  np.testing.assert_allclose(c, col / 255.0, atol=1e-7)
  lines = ["ply", "format ascii 1.0", "comment hi", "element vertex 20", "property float x",
           "property float y", "property float z", "property uchar red", "property uchar green",
           "property uchar blue", "element face 1", "property list uchar int vertex_indices",
           "end_header"]
  lines += [" ".join(f"{x:.9g}" for x in pts[i]) + " " + " ".join(map(str, col[i])) for i in range(20)]
  lines += ["3 0 1 2"]
  (tmp_path / "a.ply").write_text("\n".join(lines) + "\n")
  p, c = ply.read_points(tmp_path / "a.ply")
  np.testing.assert_array_equal(p, pts)
  np.testing.assert_allclose(c, col / 255.0, atol=1e-7)
  assert ply.read_ply(tmp_path / "a.ply")["face"]["vertex_indices"][0].tolist() == [0, 1, 2]
  ply.write_points(tmp_path / "n.ply", pts)
  assert ply.read_points(tmp_path / "n.ply")[1] is None


def test_truncated_binary_and_ascii(tmp_path):
  g = gs.random_gaussians(jax.random.PRNGKey(0), 10, sh_degree=1)
  path = tmp_path / "g.ply"
  ply.write_gaussians(path, g)
  path.write_bytes(path.read_bytes()[:-7])
  with pytest.raises(ply.PlyError, match=r"g\.ply.*truncated.*vertex"):
    ply.read_gaussians(path)
  text = "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n" \
         "property float z\nend_header\n0 0 0\n1 1 1\n2 2\n"
  (tmp_path / "t.ply").write_text(text)
  with pytest.raises(ply.PlyError, match=r"t\.ply.*truncated"):
    ply.read_points(tmp_path / "t.ply")


@pytest.mark.parametrize("header, match", [
    ("plx\nformat ascii 1.0\nend_header\n", "not a PLY"),
    ("ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\n", "end_header"),
    ("ply\nformat binary_middle_endian 1.0\nend_header\n", "format"),
    ("ply\nformat ascii 1.0\nelement vertex one\nend_header\n", "element <name> <count>"),
    ("ply\nformat ascii 1.0\nelement vertex 1\nproperty float128 x\nend_header\n", "property"),
    ("ply\nelement vertex 0\nend_header\n", "no 'format'"),
])
def test_malformed_header(tmp_path, header, match):
  path = tmp_path / "bad.ply"
  path.write_text(header)
  with pytest.raises(ply.PlyError, match=match) as e:
    ply.read_ply(path)
  assert "bad.ply" in str(e.value)


def test_missing_properties(tmp_path):
  path = tmp_path / "pts.ply"
  ply.write_points(path, np.zeros((4, 3)))
  with pytest.raises(ply.PlyError, match=r"pts\.ply.*lacks.*f_dc_0"):
    ply.read_gaussians(path)
  with pytest.raises(ply.PlyError, match="cannot read"):
    ply.read_ply(tmp_path / "absent.ply")


@pytest.mark.skipif(not NERSEMBLE_128.exists(), reason=f"shared data absent: {NERSEMBLE_128}")
def test_read_nersemble_points():
  p, c = ply.read_points(NERSEMBLE_128 / "points3d.ply")
  assert p.shape == (10144, 3) and p.dtype == np.float32 and c.shape == (10144, 3)
  assert np.all(c == 0)  # documented: the cloud carries no colour
  assert np.all(np.abs(p) < 0.5)  # a head, in metres
