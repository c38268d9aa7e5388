"""Exports: .splat byte layout on known values, COLMAP text and transforms.json against independent
computations and against the shared NeRSemble set's own files (read by the project's loaders)."""

import json
import struct
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from splatshot_jax.cameras import (Camera, load_colmap, load_transforms_json, read_colmap_images)
from splatshot_jax.gaussians import SH_C0, Gaussians
from splatshot_jax.io import exports

SHARED = Path(__file__).resolve().parent.parent / ".." / "shared" / "data" / "multiview" / "nersemble-128-16views"


def _random(seed, n, degree):
  rs = np.random.default_rng(seed)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  return Gaussians(means=f32(rs.normal(size=(n, 3))), log_scales=f32(rs.uniform(-5, 0, (n, 3))),
                   quats=f32(rs.normal(size=(n, 4))), opacity_logits=f32(rs.normal(0, 3, n)),
                   sh=f32(rs.normal(0, 1.5, (n, (degree + 1) ** 2, 3))))


def _known():
  """Two Gaussians with hand-picked values; the second is bigger, so it comes first."""
  rgb = np.array([[0.25, 0.5, 1.2], [0.0, 1.0, 0.6]])  # 1.2 clamps to 255
  return Gaussians(
      means=jnp.asarray([[1.0, -2.0, 3.5], [0.25, 0.5, -0.125]], jnp.float32),
      log_scales=jnp.asarray(np.log([[0.1, 0.2, 0.4], [0.5, 0.5, 1.0]]), jnp.float32),
      quats=jnp.asarray([[2.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]], jnp.float32),
      opacity_logits=jnp.asarray([np.log(0.8 / 0.2), 0.0], jnp.float32),
      sh=jnp.asarray(((rgb - 0.5) / SH_C0)[:, None, :], jnp.float32))


def test_splat_bytes_on_known_values(tmp_path):
  path = exports.write_splat(tmp_path / "a.splat", _known())
  data = path.read_bytes()
  f = lambda *v: struct.pack("<3f", *v)
  s = lambda v: np.log(v).astype(np.float32).astype(np.float64)  # the float32 logs the Gaussians hold
  second = (f(0.25, 0.5, -0.125) + f(*np.exp(s([0.5, 0.5, 1.0]))) +
            bytes([0, 255, 153, 128]) +  # 0.6 * 255 = 153; sigmoid(0) * 255 = 127.5 -> 128 (half to even)
            bytes([219, 219, 128, 128]))  # 128 / sqrt(2) + 128 = 218.5 -> 219
  first = (f(1.0, -2.0, 3.5) + f(*np.exp(s([0.1, 0.2, 0.4]))) +
           bytes([64, 128, 255, 204]) +  # 0.25 * 255 = 63.75 -> 64, 0.5 -> 127.5 -> 128, 0.8 -> 204
           bytes([255, 128, 128, 128]))  # w = 1 -> 256, clipped
  assert len(data) == 64
  assert data[:32] == second and data[32:] == first


def test_splat_random_round_trip(tmp_path):
  seed = int(np.random.default_rng().integers(2**31))
  g = _random(seed, 300, 2)
  data = exports.write_splat(tmp_path / "r.splat", g).read_bytes()
  assert len(data) == 32 * 300, f"seed {seed}"
  rec = np.frombuffer(data, exports.SPLAT_DTYPE)
  op = 1 / (1 + np.exp(-np.asarray(g.opacity_logits, np.float64)))
  key = np.exp(np.asarray(g.log_scales, np.float64).sum(-1)) * op
  order = np.argsort(-key, kind="stable")
  assert np.all(np.diff(key[order]) <= 0)
  np.testing.assert_array_equal(rec["position"], np.asarray(g.means)[order], err_msg=f"seed {seed}")
  np.testing.assert_allclose(rec["scale"], np.exp(np.asarray(g.log_scales, np.float64))[order], rtol=1e-6)
  np.testing.assert_allclose(rec["rgba"][:, 3] / 255, op[order], atol=0.5 / 255 + 1e-9)
  q = np.asarray(g.quats, np.float64)[order]
  q /= np.linalg.norm(q, axis=-1, keepdims=True)
  np.testing.assert_allclose((rec["rotation"].astype(float) - 128) / 128, np.clip(q, -1, 127 / 128),
                             atol=0.5 / 128 + 1e-9, err_msg=f"seed {seed}")
  rgb = np.clip(0.5 + SH_C0 * np.asarray(g.sh, np.float64)[:, 0], 0, 1)[order]
  np.testing.assert_allclose(rec["rgba"][:, :3] / 255, rgb, atol=0.5 / 255 + 1e-9)


def _parse_colmap_text(folder):
  """Independent minimal reader: {id: (model, w, h, params)}, [(id, q, t, cam_id, name)]."""
  rows = lambda name: [l for l in (folder / name).read_text().splitlines() if not l.startswith("#")]
  cams = {}
  for line in rows("cameras.txt"):
    tok = line.split()
    cams[int(tok[0])] = (tok[1], int(tok[2]), int(tok[3]), np.array(tok[4:], float))
  lines = rows("images.txt")
  assert len(lines) % 2 == 0, "images.txt needs two lines per image"
  imgs = []
  for line in lines[::2]:
    tok = line.split()
    imgs.append((int(tok[0]), np.array(tok[1:5], float), np.array(tok[5:8], float), int(tok[8]), tok[9]))
  assert all(l == "" for l in lines[1::2])
  return cams, imgs


def _known_camera():
  th = np.radians(30.0)
  c, s = np.cos(th), np.sin(th)
  vm = np.eye(4)
  vm[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]  # rotation by 30 deg about y
  vm[:3, 3] = [0.1, -0.2, 3.0]
  K = np.array([[100.0, 0, 31.5], [0, 110.0, 24.25], [0, 0, 1]])
  return Camera(jnp.asarray(vm[None], jnp.float32), jnp.asarray(K[None], jnp.float32), 64, 48), th


def test_colmap_text_on_a_known_camera(tmp_path):
  cam, th = _known_camera()
  exports.write_colmap_text(tmp_path, cam, ["a.png"], points=np.zeros((2, 3)))
  cams, imgs = _parse_colmap_text(tmp_path)
  assert list(cams) == [1] and cams[1][:3] == ("PINHOLE", 64, 48)
  np.testing.assert_allclose(cams[1][3], [100.0, 110.0, 31.5, 24.25], atol=1e-5)
  (iid, q, t, cid, name), = imgs
  # A rotation by th about y is the unit quaternion (cos th/2, 0, sin th/2, 0).
  np.testing.assert_allclose(q, [np.cos(th / 2), 0, np.sin(th / 2), 0], atol=1e-6)
  np.testing.assert_allclose(t, [0.1, -0.2, 3.0], atol=1e-6)
  assert (iid, cid, name) == (1, 1, "a.png")
  pts = [l for l in (tmp_path / "points3D.txt").read_text().splitlines() if not l.startswith("#")]
  assert pts == ["1 0 0 0 128 128 128 0", "2 0 0 0 128 128 128 0"]


def test_transforms_json_round_trip(tmp_path):
  cam, th = _known_camera()
  path = exports.write_transforms_json(tmp_path / "transforms.json", cam, ["views/a.png"])
  fr = json.loads(path.read_text())["frames"][0]
  c2w = np.asarray(fr["transform_matrix"])
  R, t = np.asarray(cam.viewmat[0, :3, :3], np.float64), np.asarray(cam.viewmat[0, :3, 3], np.float64)
  # Independently: the centre is −Rᵀt; OpenGL axes are OpenCV's x, −y, −z.
  np.testing.assert_allclose(c2w[:3, 3], -R.T @ t, atol=1e-6)
  np.testing.assert_allclose(c2w[:3, :3], R.T @ np.diag([1.0, -1.0, -1.0]), atol=1e-6)
  assert (fr["fl_x"], fr["fl_y"], fr["cx"], fr["cy"], fr["w"], fr["h"]) == (100.0, 110.0, 31.5, 24.25, 64, 48)
  back = load_transforms_json(path)
  np.testing.assert_allclose(back.cameras.viewmat, cam.viewmat, atol=1e-6)
  np.testing.assert_allclose(back.cameras.K, cam.K, atol=1e-6)
  assert back.image_paths[0] == tmp_path / "views" / "a.png"


@pytest.mark.skipif(not (SHARED / "sparse" / "0" / "images.bin").exists(),
                    reason=f"shared NeRSemble set absent ({SHARED})")
def test_exports_match_the_shared_sets_own_files(tmp_path):
  """Our writers reproduce the set's transforms.json (from its COLMAP cameras) and its images.bin
  poses (from its transforms.json cameras)."""
  theirs_json = json.loads((SHARED / "transforms.json").read_text())
  colmap = load_colmap(SHARED / "sparse" / "0")
  by_name = {Path(fr["file_path"]).stem: fr for fr in theirs_json["frames"]}
  ours = exports.transforms_dict(colmap.cameras, [f"images/{n}.png" for n in colmap.names])
  for name, fr in zip(colmap.names, ours["frames"]):
    ref = by_name[name]
    np.testing.assert_allclose(fr["transform_matrix"], ref["transform_matrix"], atol=2e-6, err_msg=name)
    np.testing.assert_allclose([fr[k] for k in ("fl_x", "fl_y", "cx", "cy", "w", "h")],
                               [ref[k] for k in ("fl_x", "fl_y", "cx", "cy", "w", "h")], rtol=1e-6)

  nerf = load_transforms_json(SHARED / "transforms.json")
  exports.write_colmap_text(tmp_path, nerf.cameras, [f"{n}.png" for n in nerf.names])
  _, imgs = _parse_colmap_text(tmp_path)
  bin_poses = {Path(name).stem: (q, t) for _, q, t, _, name in read_colmap_images(SHARED / "sparse" / "0" / "images.bin")}
  for _, q, t, _, name in imgs:
    qb, tb = bin_poses[Path(name).stem]
    qb = qb / np.linalg.norm(qb) * np.sign(qb[0])  # q and −q are the same rotation
    np.testing.assert_allclose(q, qb, atol=2e-6, err_msg=name)
    np.testing.assert_allclose(t, tb, atol=2e-5, err_msg=name)


def test_run_exports_layout(tmp_path):
  g = _random(0, 10, 1)
  cam, _ = _known_camera()
  cams = Camera(jnp.concatenate([cam.viewmat] * 2), jnp.concatenate([cam.K] * 2), 64, 48)
  views = [tmp_path / "views" / f"view_{i:03d}.png" for i in range(2)]
  out = exports.write_run_exports(tmp_path, g, cams, views)
  assert out["splat"].stat().st_size == 320
  data = load_transforms_json(out["transforms"])
  assert list(data.image_paths) == views
  _, imgs = _parse_colmap_text(out["colmap"])
  assert [i[4] for i in imgs] == ["view_000.png", "view_001.png"]
  assert len((out["colmap"] / "points3D.txt").read_text().splitlines()) == 2 + 1 + 10


def test_bad_input_names_the_field(tmp_path):
  g = _known()
  with pytest.raises(ValueError, match="quats"):
    exports.write_splat(tmp_path / "x.splat", g.replace(quats=jnp.zeros((2, 4))))
  with pytest.raises(ValueError, match="names"):
    exports.write_colmap_text(tmp_path, _known_camera()[0], ["a", "b"])
  assert not (tmp_path / "x.splat").exists()
