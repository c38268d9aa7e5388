"""Tests for splatshot_jax.cameras: loaders agree with each other and with the masks, rigs look
at their target, resize/crop/interpolate are consistent, and bad files give clear errors."""

import json
import os
import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from splatshot_jax import cameras as C
from splatshot_jax.io import ply

SHARED = Path(os.environ.get("SPLATSHOT_SHARED",
                             Path(__file__).resolve().parents[1].parent / "shared"))
MULTIVIEW = SHARED / "data/multiview"
needs = lambda name: pytest.mark.skipif(not (MULTIVIEW / name).exists(),
                                        reason=f"shared data absent: {MULTIVIEW / name}")
REAL = [pytest.param(n, marks=needs(n)) for n in ("nersemble-128-16views", "nersemble-306-16views")]


def _np(x):
  return np.asarray(x, np.float64)


@pytest.mark.parametrize("name", REAL)
def test_transforms_and_colmap_agree(name):
  a = C.load_multiview(MULTIVIEW / name)
  b = C.load_colmap(MULTIVIEW / name / "sparse" / "0")
  assert len(a) == len(b) == 16 and (a.cameras.width, a.cameras.height) == (550, 802)
  order = [b.names.index(n) for n in a.names]
  np.testing.assert_allclose(_np(a.cameras.viewmat), _np(b.cameras.viewmat)[order], atol=1e-5)
  np.testing.assert_allclose(_np(a.cameras.K), _np(b.cameras.K)[order], rtol=1e-5)
  assert [p.name for p in a.image_paths] == [b.image_paths[i].name for i in order]
  assert all(p.exists() for p in a.image_paths + a.mask_paths)
  R = _np(a.cameras.viewmat)[:, :3, :3]
  np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-5)


@pytest.mark.parametrize("name", REAL)
def test_load_images_and_masks(name):
  data = C.load_multiview(MULTIVIEW / name, split="val")
  im, m = data.load_images(), data.load_masks()
  assert im.shape == (1, 802, 550, 3) and m.shape == (1, 802, 550)
  assert 0.1 < m.mean() < 0.9 and im[m == 0].mean() > 0.9  # white background off the mask


@pytest.mark.parametrize("name", REAL)
def test_splits(name):
  assert C.load_multiview(MULTIVIEW / name, split="val").names == ("00000_08",)
  assert len(C.load_transforms_json(MULTIVIEW / name, split="train")) == 15


@pytest.mark.parametrize("name", REAL)
def test_points_project_onto_foreground(name):
  data = C.load_multiview(MULTIVIEW / name)
  pts, _ = ply.read_points(MULTIVIEW / name / "points3d.ply")
  uv, depth = C.project_points(data.cameras, jnp.asarray(pts))
  uv, depth = np.asarray(uv), np.asarray(depth)
  for v, mask_path in enumerate(data.mask_paths):
    mask = np.asarray(Image.open(mask_path).convert("L")) > 127
    ij = np.floor(uv[v]).astype(int)
    inside = (ij[:, 0] >= 0) & (ij[:, 0] < 550) & (ij[:, 1] >= 0) & (ij[:, 1] < 802) & (depth[v] > 0)
    hit = inside.copy()
    hit[inside] = mask[ij[inside, 1], ij[inside, 0]]
    assert hit.mean() >= 0.95, f"{name} view {data.names[v]}: only {hit.mean():.3f} on the mask"


@needs("nersemble-333-48views")
def test_splatshot_views_unpadded():
  folder = MULTIVIEW / "nersemble-333-48views"
  data = C.load_multiview(folder)
  assert len(data) == 48 and data.padding == (7, 7, 5, 5) and data.valid.all()
  assert data.images.shape == (48, 802, 550, 3) == data.controls["parsing_control"].shape
  assert (data.cameras.width, data.cameras.height) == (550, 802)
  raw = np.load(folder / "view_003.npz")
  # Reflection padding (OpenCV BORDER_REFLECT = numpy 'symmetric') reproduces the stored image.
  np.testing.assert_array_equal(np.pad(data.images[3], ((7, 7), (5, 5), (0, 0)), "symmetric"),
                                raw["padded_image"])
  padded = C.pad(data.cameras, *data.padding)
  assert (padded.width, padded.height) == (560, 816)
  np.testing.assert_allclose(_np(padded.K[3]) - raw["K"], [[0, 0, 5], [0, 0, 7], [0, 0, 0]], atol=1e-4)
  assert C.centered_padding(550, 802) == (7, 7, 5, 5)


def test_quaternion_round_trip():
  q = jax.random.normal(jax.random.PRNGKey(0), (500, 4))
  q = jnp.concatenate([q, jnp.array([[0.0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1e-4, 1, 1, 0]])])
  q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
  q = jnp.where(q[:, :1] < 0, -q, q)
  q2 = C.rotmat_to_quat(C.quat_to_rotmat(q))
  np.testing.assert_allclose(np.abs(np.sum(_np(q2) * _np(q), -1)), 1.0, atol=1e-5)


def test_orbit_rig_looks_at_target():
  target = jnp.array([0.1, -0.2, 0.3])
  yaws, pitches = np.linspace(-60, 60, 8), np.array([-20.0, 0.0, 20.0])
  cams = C.orbit_rig(target, 1.5, yaws, pitches, fov_deg=20.0, width=96, height=128)
  assert cams.viewmat.shape == (24, 4, 4)
  uv, depth = C.project_points(cams, target[None])
  np.testing.assert_allclose(_np(uv)[:, 0], np.tile([48.0, 64.0], (24, 1)), atol=1e-3)
  np.testing.assert_allclose(_np(depth)[:, 0], 1.5, atol=1e-5)
  R = _np(cams.viewmat)[:, :3, :3]
  np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-6)
  np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(_np(cams.center - target), axis=-1), 1.5, atol=1e-5)
  # Image up (-y camera axis) leans towards world +y; yaw 0 pitch 0 sits on +z; pitch > 0 is above.
  assert np.all(-R[:, 1, 1] > 0.9)
  front = C.orbit_rig(target, 2.0, [0.0, 90.0], [0.0, 30.0], grid=False, fov_deg=30, width=8, height=8)
  np.testing.assert_allclose(_np(front.center[0]), _np(target) + [0, 0, 2], atol=1e-5)
  c1 = _np(front.center[1]) - _np(target)
  assert c1[0] > 1.0 and c1[1] == pytest.approx(1.0, abs=1e-5)
  np.testing.assert_allclose(_np(front.K[0]), [[4 / np.tan(np.radians(15)), 0, 4],
                                               [0, 4 / np.tan(np.radians(15)), 4], [0, 0, 1]], rtol=1e-5)


def test_resize_and_crop():
  cams = C.orbit_rig(jnp.zeros(3), 2.0, [0.0, 30.0], [10.0], fov_deg=40, width=550, height=802)
  pts = jax.random.normal(jax.random.PRNGKey(1), (50, 3)) * 0.2
  uv, _ = C.project_points(cams, pts)
  half = C.resize(cams, 0.5)
  assert (half.width, half.height) == (275, 401)
  uv2, _ = C.project_points(half, pts)
  np.testing.assert_allclose(_np(uv2), _np(uv) * [275 / 550, 401 / 802], rtol=1e-5)
  back = C.resize(half, (550, 802))
  np.testing.assert_allclose(_np(back.K), _np(cams.K), rtol=1e-6)
  cropped = C.crop(cams, 10, 20, 100, 200)
  np.testing.assert_allclose(_np(C.project_points(cropped, pts)[0]), _np(uv) - [10, 20], atol=1e-3)
  np.testing.assert_allclose(_np(C.pad(cropped, 20, 582, 10, 440).K), _np(cams.K), atol=1e-4)


def test_interpolate_cameras():
  cams = C.orbit_rig(jnp.zeros(3), 2.0, [-40.0, 50.0], [10.0, -5.0], grid=False, fov_deg=30,
                     width=64, height=64)
  mid = C.interpolate_cameras(cams[0], cams[1], [0.0, 0.5, 1.0])
  np.testing.assert_allclose(_np(mid.viewmat[0]), _np(cams.viewmat[0]), atol=1e-5)
  np.testing.assert_allclose(_np(mid.viewmat[2]), _np(cams.viewmat[1]), atol=1e-5)
  R = _np(mid.viewmat[1, :3, :3])
  np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-5)


def _write_colmap(folder, model_id, params, viewmats, names):
  folder.mkdir(parents=True)
  with open(folder / "cameras.bin", "wb") as f:
    f.write(struct.pack("<Q", 1) + struct.pack("<iiQQ", 1, model_id, 64, 48))
    f.write(struct.pack(f"<{len(params)}d", *params))
  with open(folder / "images.bin", "wb") as f:
    f.write(struct.pack("<Q", len(names)))
    for i, (vm, name) in enumerate(zip(viewmats, names)):
      q = _np(C.rotmat_to_quat(jnp.asarray(vm[:3, :3], jnp.float32)))
      f.write(struct.pack("<i7di", i + 1, *q, *vm[:3, 3], 1) + name.encode() + b"\0")
      f.write(struct.pack("<Q", 1) + struct.pack("<ddq", 1.0, 2.0, -1))


def test_colmap_models_and_truncation(tmp_path):
  cams = C.orbit_rig(jnp.zeros(3), 2.0, [0.0, 40.0], [0.0], fov_deg=30, width=64, height=48)
  vms = _np(cams.viewmat)
  _write_colmap(tmp_path / "a/sparse/0", 0, [50.0, 32.0, 24.0], vms, ["b.png", "a.png"])
  data = C.load_multiview(tmp_path / "a")
  assert data.names == ("a", "b") and data.image_paths[0] == tmp_path / "a/images/a.png"
  np.testing.assert_allclose(_np(data.cameras.viewmat), vms[::-1], atol=1e-5)
  np.testing.assert_allclose(_np(data.cameras.K[0]), [[50, 0, 32], [0, 50, 24], [0, 0, 1]])
  _write_colmap(tmp_path / "b", 4, [50.0, 51.0, 32.0, 24.0, 0.1, 0, 0, 0], vms, ["a.png", "b.png"])
  with pytest.warns(UserWarning, match="distortion"):
    data = C.load_colmap(tmp_path / "b")
  assert float(data.cameras.K[0, 1, 1]) == 51.0
  raw = (tmp_path / "b/images.bin").read_bytes()
  (tmp_path / "b/images.bin").write_bytes(raw[:-10])
  with pytest.raises(C.CameraFormatError, match=r"images\.bin.*truncated"):
    C.load_colmap(tmp_path / "b")
  _write_colmap(tmp_path / "c", 5, [50.0, 51.0, 32.0, 24.0, 0, 0, 0, 0], vms, ["a.png", "b.png"])
  with pytest.raises(C.CameraFormatError, match=r"cameras\.bin.*OPENCV_FISHEYE"):
    C.load_colmap(tmp_path / "c")


def _frame(**kw):
  fr = {"file_path": "images/x.png", "transform_matrix": np.eye(4).tolist(), "fl_x": 10.0,
        "fl_y": 10.0, "cx": 4.0, "cy": 4.0, "w": 8, "h": 8}
  fr.update(kw)
  return {k: v for k, v in fr.items() if v is not None}


@pytest.mark.parametrize("content, match", [
    ("{not json", "invalid JSON"),
    (json.dumps({"frame": []}), "'frames' must be a list"),
    (json.dumps({"frames": [_frame(transform_matrix=None)]}), r"frames\[0\].*'transform_matrix'"),
    (json.dumps({"frames": [_frame(transform_matrix=[[1, 2], [3, 4]])]}), "4x4"),
    (json.dumps({"frames": [_frame(fl_x=None)]}), r"frames\[0\].*'fl_x'"),
    (json.dumps({"frames": [_frame(), _frame(fl_x="big")]}), r"frames\[1\].*'fl_x'.*number"),
    (json.dumps({"frames": [_frame(), _frame(w=16)]}), "different image sizes"),
])
def test_transforms_errors(tmp_path, content, match):
  (tmp_path / "transforms.json").write_text(content)
  with pytest.raises(C.CameraFormatError, match=match) as e:
    C.load_multiview(tmp_path)
  assert "transforms.json" in str(e.value)


def test_transforms_conventions(tmp_path):
  """OpenGL c2w -> OpenCV w2c, global intrinsics, camera_angle_x fallback."""
  c2w = np.eye(4)
  c2w[:3, 3] = [0, 0, 3]  # OpenGL camera at z=3 looking down -z, i.e. at the origin
  meta = {"camera_angle_x": 2 * np.arctan(0.5), "w": 8, "h": 6,
          "frames": [{"file_path": "a", "transform_matrix": c2w.tolist()}]}
  (tmp_path / "transforms.json").write_text(json.dumps(meta))
  data = C.load_transforms_json(tmp_path / "transforms.json")
  uv, depth = C.project_points(data.cameras, jnp.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.0]]))
  np.testing.assert_allclose(_np(depth)[0], [3.0, 3.0], atol=1e-6)
  # fx = 0.5 * w / tan(angle / 2) = 8; +y world (up) goes to smaller image row (y down).
  np.testing.assert_allclose(_np(uv)[0], [[4, 3], [4 + 8 * 0.5 / 3, 3 - 8 * 0.5 / 3]], atol=1e-5)


def test_splatshot_view_errors(tmp_path):
  (tmp_path / "meta.json").write_text(json.dumps({"num_views": 1, "padded_width": 16}))
  np.savez(tmp_path / "view_000.npz", padded_image=np.zeros((16, 16, 3), np.uint8))
  with pytest.raises(C.CameraFormatError, match=r"meta\.json.*'padded_height'"):
    C.load_multiview(tmp_path)
  (tmp_path / "meta.json").write_text(json.dumps({"num_views": 1, "padded_width": 16,
                                                  "padded_height": 16}))
  with pytest.raises(C.CameraFormatError, match=r"view_000\.npz.*missing field 'viewmat'"):
    C.load_splatshot_views(tmp_path)
  ok = dict(padded_image=np.zeros((16, 16, 3), np.uint8), viewmat=np.eye(4), K=np.eye(3)[:2],
            valid=np.array(True), heatmap_control=np.zeros((10, 12, 3), np.uint8),
            parsing_control=np.zeros((10, 12, 3), np.uint8))
  np.savez(tmp_path / "view_000.npz", **ok)
  with pytest.raises(C.CameraFormatError, match=r"view_000\.npz.*'K'.*\(3, 3\)"):
    C.load_splatshot_views(tmp_path)
  ok["K"] = np.eye(3)
  np.savez(tmp_path / "view_000.npz", **ok)
  data = C.load_splatshot_views(tmp_path)
  assert data.padding == (3, 3, 2, 2) and data.images.shape == (1, 10, 12, 3)
  (tmp_path / "view_000.npz").write_bytes(b"garbage")
  with pytest.raises(C.CameraFormatError, match=r"view_000\.npz.*cannot read"):
    C.load_splatshot_views(tmp_path)
  (tmp_path / "empty").mkdir()
  with pytest.raises(C.CameraFormatError, match="no recognised camera format"):
    C.load_multiview(tmp_path / "empty")
