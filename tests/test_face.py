"""Tests for splatshot_jax.face: detection and its errors, alignment, identity, 3D landmarks, control
maps and template-choice features. Geometry is checked on fresh random inputs against closed forms or
slow references; the rest on the shared photos and the 333 template views (skipped when absent)."""

import colorsys
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from splatshot_jax import cameras as C
from splatshot_jax.face import align, controls, detect, features, identity, landmarks3d
from splatshot_jax.io.images import ImageError

SHARED = Path(os.environ.get("SPLATSHOT_SHARED",
                             Path(__file__).resolve().parents[1].parent / "shared"))
CELEBA = SHARED / "data/photos/celeba-hq/images"
SET333 = SHARED / "data/multiview/nersemble-333-48views"
needs_celeba = pytest.mark.skipif(not CELEBA.exists(), reason=f"shared data absent: {CELEBA}")
needs_333 = pytest.mark.skipif(not SET333.exists(), reason=f"shared data absent: {SET333}")


def _photo(i):
  return np.asarray(Image.open(CELEBA / f"{i:05d}.jpg").convert("RGB"))


# ----------------------------------------------------------------------------- detection


@needs_celeba
def test_analyze_photo_landmarks():
  a = detect.analyze_photo(CELEBA / "00001.jpg")  # through the image loader
  assert a.landmarks68.shape == (68, 2) and a.landmarks68.dtype == np.float32
  assert a.num_faces == 1 and a.image_hw == (1024, 1024) and a.face_size_px > 300
  x0, y0, x1, y1 = a.box
  pad = 0.2 * (x1 - x0)  # dlib's box spans brows to chin; the jaw may stick out of it
  assert ((a.landmarks68 > [x0 - pad, y0 - pad]) & (a.landmarks68 < [x1 + pad, y1 + pad])).all()
  right_eye, left_eye = a.eye_centers
  assert right_eye[0] < left_eye[0]  # subject's right eye is on the image left
  assert a.landmarks68[30, 1] > right_eye[1] and a.landmarks68[8, 1] > a.landmarks68[57, 1]


@needs_celeba
@pytest.mark.parametrize("kind", ["grayscale", "exif_rotated"])
def test_photo_files_through_the_loader(tmp_path, kind):
  img = _photo(5)[::2, ::2]
  ref = detect.analyze_photo(img if kind != "grayscale" else np.asarray(Image.fromarray(img).convert("L")))
  path = tmp_path / "photo.jpg"
  if kind == "grayscale":
    Image.fromarray(img).convert("L").save(path, quality=98)
  else:
    # Stored sideways with EXIF orientation 6 (display = rotate 90 deg clockwise), as phones do.
    im = Image.fromarray(np.ascontiguousarray(np.rot90(img, 1)))
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(path, quality=98, exif=exif)
  a = detect.analyze_photo(path)
  assert a.image_hw == img.shape[:2]
  assert np.median(np.linalg.norm(a.landmarks68 - ref.landmarks68, axis=-1)) < 3.0


def test_no_face_blank_image():
  with pytest.raises(detect.NoFaceError, match="no face found"):
    detect.analyze_photo(np.full((200, 300, 3), 128, np.uint8))


@needs_celeba
def test_face_too_small_states_sizes():
  small = np.asarray(Image.fromarray(_photo(1)).resize((40, 40), Image.BILINEAR))
  with pytest.raises(detect.FaceTooSmallError) as e:
    detect.analyze_photo(small)
  msg = str(e.value)
  assert "at least 64 px" in msg and "the face is" in msg
  found = float(msg.split("the face is ")[1].split(" px")[0])
  assert 10 <= found < 40


def test_unreadable_and_missing_files(tmp_path):
  bad = tmp_path / "garbage.jpg"
  bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
  with pytest.raises(ImageError, match="garbage.jpg"):
    detect.analyze_photo(bad)
  with pytest.raises(ImageError, match="missing.png"):
    detect.analyze_photo(tmp_path / "missing.png")


def test_bad_array_shape():
  with pytest.raises(ValueError, match=r"expected an \(H, W, 3\) RGB image"):
    detect.analyze_photo(np.zeros((32, 32, 5), np.uint8))


@needs_celeba
def test_several_faces_warns_and_takes_largest():
  big = _photo(2)[::2, ::2]  # 512 px
  small = np.asarray(Image.fromarray(_photo(3)).resize((256, 256)))
  canvas = np.zeros((512, 768, 3), np.uint8)
  canvas[:, :512] = big
  canvas[128:384, 512:] = small
  with pytest.warns(UserWarning, match="2 faces found"):
    a = detect.analyze_photo(canvas)
  assert a.num_faces == 2 and a.box[2] <= 512


# ----------------------------------------------------------------------------- alignment


def _random_similarity(rng):
  th, s = rng.uniform(-np.pi, np.pi), rng.uniform(0.3, 3.0)
  return np.array([[s * np.cos(th), -s * np.sin(th), rng.normal() * 50],
                   [s * np.sin(th), s * np.cos(th), rng.normal() * 50]])


def test_similarity_transform_recovers_random_maps():
  rng = np.random.default_rng()
  for _ in range(5):
    m = _random_similarity(rng)
    src = rng.normal(size=(int(rng.integers(2, 70)), 2)) * 100
    np.testing.assert_allclose(align.similarity_transform(src, align.transform_points(m, src)), m,
                               atol=1e-8)
  # A mirrored target is fitted by a proper rotation (no reflection), never by a flip.
  src = rng.normal(size=(10, 2))
  m = align.similarity_transform(src, src * [-1, 1])
  assert np.linalg.det(m[:, :2]) > 0


def _warp_reference(img, m, out_hw, border, fill):
  """Per-pixel bilinear resampling, written out plainly."""
  inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))
  h, w = img.shape[:2]
  out = np.zeros(out_hw + img.shape[2:])

  def px(y, x):
    if border == "constant" and not (0 <= x < w and 0 <= y < h):
      return np.full(img.shape[2:], fill, float)
    if border == "edge":
      x, y = min(max(x, 0), w - 1), min(max(y, 0), h - 1)
    if border == "reflect":
      x, y = x % (2 * w), y % (2 * h)
      x, y = (2 * w - 1 - x if x >= w else x), (2 * h - 1 - y if y >= h else y)
    return img[y, x].astype(float)

  for i in range(out_hw[0]):
    for j in range(out_hw[1]):
      u, v, _ = inv @ [j + 0.5, i + 0.5, 1]
      u, v = u - 0.5, v - 0.5
      x0, y0 = int(np.floor(u)), int(np.floor(v))
      fx, fy = u - x0, v - y0
      out[i, j] = ((1 - fy) * ((1 - fx) * px(y0, x0) + fx * px(y0, x0 + 1))
                   + fy * ((1 - fx) * px(y0 + 1, x0) + fx * px(y0 + 1, x0 + 1)))
  return out


@pytest.mark.parametrize("border", align.BORDERS)
def test_warp_affine_matches_reference(border):
  rng = np.random.default_rng()
  img = rng.uniform(0, 1, size=(13, 17, 3)).astype(np.float32)
  th, s = rng.uniform(-0.5, 0.5), rng.uniform(0.8, 1.6)  # magnifying: no box prefilter
  m = np.array([[s * np.cos(th), -s * np.sin(th), rng.uniform(-4, 4)],
                [s * np.sin(th), s * np.cos(th), rng.uniform(-4, 4)]])
  out, valid = align.warp_affine(img, m, (30, 36), border=border, fill=0.25)
  np.testing.assert_allclose(out, _warp_reference(img, m, (30, 36), border, 0.25), atol=1e-5)
  assert valid.any() and not valid.all()


def test_warp_affine_identity_and_shrink():
  img = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
  out, valid = align.warp_affine(img, np.eye(2, 3), (20, 24))
  np.testing.assert_array_equal(out, img)
  assert valid.all()
  # 4x shrink of a 2x2-checker: the box prefilter averages it to flat grey (bilinear alone aliases).
  checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
  small, _ = align.warp_affine(checker, np.diag([0.25, 0.25, 1.0])[:2], (16, 16))
  assert np.abs(small.astype(int) - 128).max() <= 1


@needs_celeba
def test_align_face_to_known_target():
  img = _photo(4)
  a = detect.analyze_photo(img)
  rng = np.random.default_rng()
  th, s = rng.uniform(-0.3, 0.3), 256 / 1024 * rng.uniform(0.8, 1.2)  # upright enough to re-detect
  m = np.array([[s * np.cos(th), -s * np.sin(th), 0.0], [s * np.sin(th), s * np.cos(th), 0.0]])
  target = align.transform_points(m, a.landmarks68)
  target -= align.five_points(target).mean(0) - [128, 128]  # centre the face in the crop
  al = align.align_face(img, a.landmarks68, target, (256, 256))
  assert al.image.shape == (256, 256, 3) and al.image.dtype == np.uint8
  assert al.residual_px < 1e-6
  np.testing.assert_allclose(al.landmarks68, target, atol=1e-3)
  # The aligned photo is a face in the same place: re-detect it.
  b = detect.analyze_photo(al.image, min_face_px=32)
  assert np.median(np.linalg.norm(b.landmarks68 - target, axis=-1)) < 4.0


# ----------------------------------------------------------------------------- identity


@needs_celeba
def test_identity_distance_mirror_and_different_people():
  imgs = [_photo(i) for i in (0, 1, 2)]
  embs = [identity.identity_embedding(x) for x in imgs]
  assert embs[0].shape == (128,) and embs[0].dtype == np.float32
  mirror = identity.identity_distance(imgs[0], imgs[0][:, ::-1])
  assert mirror < 0.35
  for i, j in ((0, 1), (0, 2), (1, 2)):
    assert identity.embedding_distance(embs[i], embs[j]) >= 0.5
  # 00012 and 00013 are two photos of the same celebrity.
  assert identity.identity_distance(_photo(12), _photo(13)) < 0.45


# ----------------------------------------------------------------------------- 3D landmarks


def _random_rig(rng, n_views, size=(400, 300)):
  yaw = rng.uniform(-1.0, 1.0, n_views)
  pitch = rng.uniform(-0.3, 0.3, n_views)
  r = rng.uniform(0.8, 1.5, n_views)
  eye = np.stack([r * np.sin(yaw) * np.cos(pitch), r * np.sin(pitch), -r * np.cos(yaw) * np.cos(pitch)], -1)
  vm = np.asarray(C.look_at(eye, np.zeros_like(eye), up=(0.0, -1.0, 0.0)), np.float64)
  f = rng.uniform(500, 900, n_views)
  K = np.asarray(C.intrinsics(f, f, size[1] / 2 + rng.normal(size=n_views), size[0] / 2), np.float64)
  return vm, K


def test_triangulation_robust_to_outliers_and_missing_views():
  rng = np.random.default_rng()
  V, N = 12, 68
  X = rng.normal(size=(N, 3)) * 0.08
  vm, K = _random_rig(rng, V)
  P = landmarks3d.projection_matrices(vm, K)
  uv = np.einsum("vij,nj->vni", P[:, :, :3], X) + P[:, None, :, 3]
  uv = uv[..., :2] / uv[..., 2:]
  obs = uv + rng.normal(size=uv.shape) * 0.5
  detected = np.ones(V, bool)
  detected[[2, 7]] = False  # detection failed there
  obs[[2, 7]] = np.nan
  obs[5] = rng.uniform(0, 300, size=(N, 2))  # a wrong face in view 5: every point off
  bad = rng.random((V, N)) < 0.1  # plus scattered per-point outliers
  obs[bad] += rng.normal(size=(bad.sum(), 2)) * 60
  res = landmarks3d.triangulate_landmarks(obs, detected, vm, K, inlier_px=4.0)
  assert res.valid.all()
  assert not res.views_used[[2, 5, 7]].any() and res.views_used.sum() == V - 3
  # 0.5 px noise gives ~1 mm depth error on random rigs; a single unrejected outlier view, centimetres.
  err = np.linalg.norm(res.points - X, axis=-1)
  assert np.median(err) < 1.5e-3 and err.max() < 6e-3
  assert res.median_reproj_error("inliers") < 1.0
  uv_j = landmarks3d.project_landmarks(res.points, C.Camera(jnp.asarray(vm, jnp.float32),
                                                            jnp.asarray(K, jnp.float32), 300, 400))
  uv_np, _ = landmarks3d._project_np(P[:, None], res.points.astype(np.float64)[None])
  np.testing.assert_allclose(np.asarray(uv_j), uv_np, atol=1e-2)  # float32 vs float64


def test_triangulation_exact_without_noise():
  rng = np.random.default_rng()
  X = rng.normal(size=(5, 3)) * 0.1
  vm, K = _random_rig(rng, 4)
  P = landmarks3d.projection_matrices(vm, K)
  uv, _ = landmarks3d._project_np(P[:, None], X[None])
  res = landmarks3d.triangulate_landmarks(uv, np.ones(4, bool), vm, K)
  np.testing.assert_allclose(res.points, X, atol=1e-5)


def test_triangulation_too_few_views_is_invalid():
  rng = np.random.default_rng(0)
  vm, K = _random_rig(rng, 3)
  uv = rng.uniform(0, 300, size=(3, 68, 2))
  det = np.zeros((3, 68), bool)
  det[0] = True  # one view only: nothing to triangulate
  res = landmarks3d.triangulate_landmarks(uv, det, vm, K)
  assert not res.valid.any() and np.isnan(res.points).all()


@pytest.fixture(scope="module")
def set333():
  if not SET333.exists():
    pytest.skip(f"shared data absent: {SET333}")
  data = C.load_splatshot_views(SET333)
  lms, ok = landmarks3d.detect_landmarks_views(data.images)
  res = landmarks3d.triangulate_camera_landmarks(lms, ok, data.cameras)
  proj = np.asarray(landmarks3d.project_landmarks(res.points, data.cameras))
  return data, lms, ok, res, proj


def test_333_triangulated_landmarks_reproject_within_3px(set333):
  data, lms, ok, res, proj = set333
  assert ok.sum() >= 40 and res.valid.all()
  med = res.median_reproj_error()
  print(f"333 set: {ok.sum()} views detected, {res.views_used.sum()} used; median reprojection "
        f"error {med:.2f} px (inliers {res.median_reproj_error('inliers'):.2f}, all detections "
        f"{res.median_reproj_error('all'):.2f})")
  assert med <= 3.0
  # The frontal view (8) agrees point by point with its own detection.
  assert np.median(np.linalg.norm(proj[8] - lms[8], axis=-1)) <= 3.0


# ----------------------------------------------------------------------------- control maps


def test_heatmap_blob_matches_official_formula():
  rng = np.random.default_rng()
  p = rng.uniform(20, 40, size=(1, 2))
  hm = controls.landmark_heatmap(p, 64, 60)
  assert hm.shape == (64, 60, 3) and hm.dtype == np.uint8
  assert (hm[..., 0] == hm[..., 1]).all() and (hm[..., 0] == hm[..., 2]).all()
  yy, xx = np.mgrid[0:64, 0:60] + 0.5
  g = np.exp(-((xx - p[0, 0]) ** 2 + (yy - p[0, 1]) ** 2) / (2 * 3.0 ** 2))
  ref = np.floor((g - g.min()) / (g.max() - g.min()) * 255)
  np.testing.assert_array_equal(hm[..., 0], ref.astype(np.uint8))
  assert not controls.landmark_heatmap(p, 64, 60, valid=False).any()
  assert not controls.landmark_heatmap(np.full((3, 2), np.nan), 64, 60).any()


def test_heatmap_drop_jaw():
  rng = np.random.default_rng()
  pts = rng.uniform(10, 90, size=(68, 2))
  a = controls.landmark_heatmap(pts, 100, 100, drop_jaw=True)
  b = controls.landmark_heatmap(pts[17:], 100, 100)
  np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="68 dlib landmarks"):
    controls.landmark_heatmap(pts[:30], 100, 100, drop_jaw=True)


def _official_peaks(h):
  from numpy.lib.stride_tricks import sliding_window_view
  h = h.astype(float)
  mx = sliding_window_view(np.pad(h, 3), (7, 7)).max((-1, -2))
  ys, xs = np.nonzero((h == mx) & (h > 15))
  return np.stack([xs + 0.5, ys + 0.5], 1)


def test_333_heatmap_statistics_match_official(set333):
  data, _, _, _, proj = set333
  for v in (4, 8, 12):
    off = data.controls["heatmap_control"][v, ..., 0].astype(float)
    ours = controls.landmark_heatmap(proj[v], data.cameras.height, data.cameras.width,
                                     drop_jaw=True)[..., 0].astype(float)
    centroid = lambda h: np.array([(h.sum(0) * np.arange(h.shape[1])).sum(),
                                   (h.sum(1) * np.arange(h.shape[0])).sum()]) / h.sum()
    assert np.linalg.norm(centroid(ours) - centroid(off)) < 5.0
    assert 0.8 < (ours > 0).mean() / (off > 0).mean() < 1.5  # similar blob area
    # Our brow/eye/nose/mouth blobs sit near official ones (different landmark definitions).
    d = np.linalg.norm(proj[v][17:, None] - _official_peaks(off)[None], axis=-1).min(1)
    assert np.median(d) < 7.0


def test_palette_round_trip_and_nearest():
  rng = np.random.default_rng()
  labels = rng.integers(0, 19, size=(30, 40))
  colors = controls.labels_to_colors(labels)
  assert colors.dtype == np.uint8 and colors.shape == (30, 40, 3)
  np.testing.assert_array_equal(controls.colors_to_labels(colors), labels)
  # Palette colours are >= 51 apart, so +-12 per channel still decodes.
  noisy = np.clip(colors.astype(int) + rng.integers(-12, 13, colors.shape), 0, 255).astype(np.uint8)
  np.testing.assert_array_equal(controls.colors_to_labels(noisy), labels)
  with pytest.raises(ValueError, match="class ids"):
    controls.labels_to_colors(np.array([[19]]))


def test_333_parsing_maps_use_the_official_palette(set333):
  data = set333[0]
  pack = lambda c: (c[..., 0].astype(np.int64) << 16) | (c[..., 1].astype(np.int64) << 8) | c[..., 2]
  present = np.unique(pack(data.controls["parsing_control"][::6]))
  assert set(present.tolist()) <= set(pack(controls.PALETTE).tolist())
  labels = controls.colors_to_labels(data.controls["parsing_control"][8])
  # Subject's left brow / eye are on the image right in the frontal view.
  xs = lambda k: np.nonzero(labels == controls.CLASS[k])[1].mean()
  assert xs("l_brow") > xs("r_brow") and xs("l_eye") > xs("r_eye")


def test_polygon_mask_against_point_in_triangle():
  rng = np.random.default_rng()
  tri = rng.uniform(0, 50, size=(3, 2))
  m = controls.polygon_mask(tri, 50, 50)
  yy, xx = np.mgrid[0:50, 0:50] + 0.5
  p = np.stack([xx, yy], -1)
  cross = lambda a, b: (b[0] - a[0]) * (p[..., 1] - a[1]) - (b[1] - a[1]) * (p[..., 0] - a[0])
  s = [cross(tri[i], tri[(i + 1) % 3]) for i in range(3)]
  ref = ((s[0] > 0) & (s[1] > 0) & (s[2] > 0)) | ((s[0] < 0) & (s[1] < 0) & (s[2] < 0))
  assert (m != ref).sum() <= 2  # only pixel centres exactly on an edge may differ
  square = controls.polygon_mask(np.array([[2, 3], [12, 3], [12, 10], [2, 10]]), 20, 20)
  assert square.sum() == 70


def test_approximate_parsing_synthetic_layout():
  a = _canonical_face()
  fg = np.ones((200, 200), bool)
  fg[:, :10] = False
  lab = controls.approximate_parsing(a, fg, 200, 200)
  cls = lambda x, y: controls.CLASS_NAMES[lab[int(y), int(x)]]
  assert cls(*a[36:42].mean(0)) == "r_eye" and cls(*a[42:48].mean(0)) == "l_eye"
  assert cls(*a[30]) == "nose" and cls(*a[51] + [0, 1]) == "u_lip"
  assert cls(*(a[1] + a[31]) / 2) == "skin"
  assert cls(a[8, 0], a[8, 1] + 8) == "neck" and cls(a[8, 0], 199) == "cloth"
  assert cls(100, 2) == "hair" and cls(3, 100) == "background"
  with pytest.raises(ValueError, match="alpha_mask"):
    controls.approximate_parsing(a, fg[:10], 200, 200)


def _canonical_face():
  """A plausible frontal 68-point face in a 200x200 image (mean dlib shape, roughly)."""
  t = np.linspace(0, np.pi, 17)
  jaw = np.stack([100 - 45 * np.cos(t), 75 + 60 * np.sin(t)], -1)
  brow_r = np.stack([np.linspace(65, 92, 5), [68, 64, 63, 64, 66]], -1)
  brow_l = brow_r[::-1] * [-1, 1] + [200, 0]
  bridge = np.stack([[100] * 4, np.linspace(75, 100, 4)], -1)
  base = np.stack([np.linspace(90, 110, 5), [108, 110, 111, 110, 108]], -1)
  eye = lambda cx: np.stack([cx + 12 * np.cos(np.linspace(np.pi, -np.pi, 7)[:6]),
                             78 + 4 * np.sin(np.linspace(np.pi, -np.pi, 7)[:6])], -1)
  outer = np.stack([100 + 18 * np.cos(np.linspace(np.pi, -np.pi, 13)[:12]),
                    127 - 7 * np.sin(np.linspace(np.pi, -np.pi, 13)[:12])], -1)
  inner = np.stack([100 + 12 * np.cos(np.linspace(np.pi, -np.pi, 9)[:8]),
                    127 - 1.5 * np.sin(np.linspace(np.pi, -np.pi, 9)[:8])], -1)
  return np.concatenate([jaw, brow_r, brow_l, bridge, base, eye(78), eye(122), outer, inner])


def test_333_approximate_parsing_agrees_with_official(set333):
  data, _, _, _, proj = set333
  accs, mious = [], []
  for v in (4, 8, 12):
    ref = controls.colors_to_labels(data.controls["parsing_control"][v])
    lab = controls.approximate_parsing(proj[v], ref > 0, data.cameras.height, data.cameras.width)
    agree = controls.parsing_agreement(
        lab, ref, classes=[controls.CLASS[k] for k in controls.APPROXIMATE_CLASSES])
    accs.append(agree["pixel_acc"])
    mious.append(agree["miou"])
  print(f"333 approximate parsing vs official (views 4, 8, 12): pixel acc {np.mean(accs):.3f}, "
        f"mIoU {np.mean(mious):.3f}")
  assert np.mean(accs) > 0.85 and np.mean(mious) > 0.5


# ----------------------------------------------------------------------------- features


def test_rgb_to_hsv_matches_colorsys():
  rgb = np.random.default_rng().uniform(0, 1, size=(200, 3))
  ours = features.rgb_to_hsv(rgb)
  ref = np.array([colorsys.rgb_to_hsv(*c) for c in rgb])
  np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_skin_stats_of_flat_colour_and_circular_hue():
  lm = _canonical_face()
  img = np.zeros((200, 200, 3), np.uint8)
  img[:] = (200, 150, 120)
  s = features.skin_color_stats(img, lm)
  h, sat, v = colorsys.rgb_to_hsv(200 / 255, 150 / 255, 120 / 255)
  np.testing.assert_allclose(s, [h, sat, v, 0, 0, 0], atol=1e-4)
  # Half the pixels just below hue 1, half just above 0: the circular mean is ~0, not 0.5.
  img[:, ::2] = (255, 0, 8)
  img[:, 1::2] = (255, 8, 0)
  s = features.skin_color_stats(img, lm)
  assert min(s[0], 1 - s[0]) < 0.01 and s[3] < 0.01


def test_shape_descriptor_invariant_to_similarity():
  rng = np.random.default_rng()
  lm = _canonical_face() + rng.normal(size=(68, 2))
  m = _random_similarity(rng)
  m[:, :2] /= np.sqrt(abs(np.linalg.det(m[:, :2])))
  th = rng.uniform(-0.3, 0.3)  # rolls a photo can have
  m[:, :2] = m[:, :2] @ np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
  a = features.landmark_shape_descriptor(lm)
  b = features.landmark_shape_descriptor(align.transform_points(m, lm) * 2.5)
  assert features.shape_similarity(a, b) > 0.9999
  other = features.landmark_shape_descriptor(lm * [1.3, 1.0])
  assert features.shape_similarity(a, other) < 0.95


def test_choose_template_and_extra_hook():
  rng = np.random.default_rng()
  base = _canonical_face()
  mk = lambda lm, skin, clip: features.FaceFeatures(
      skin_hsv=np.asarray(skin, np.float32), shape=features.landmark_shape_descriptor(lm),
      extra={"clip": np.asarray(clip, np.float32)})
  clip = rng.normal(size=(3, 16))
  templates = [mk(base * [1.25, 1.0], [0.05, 0.4, 0.8, 0.01, 0.1, 0.1], clip[0]),
               mk(base + rng.normal(size=base.shape) * 0.3, [0.06, 0.42, 0.78, 0.01, 0.1, 0.1], clip[1]),
               mk(base * [1.0, 1.3], [0.6, 0.1, 0.3, 0.1, 0.2, 0.2], clip[2])]
  photo = mk(base, [0.055, 0.41, 0.79, 0.01, 0.1, 0.1], clip[2] + 0.01 * rng.normal(size=16))
  c = features.choose_template(photo, templates)
  assert c.index == 1 and c.scores.shape == (3,) and set(c.similarities) == {"skin", "shape"}
  c = features.choose_template(photo, templates, {"clip": 1.0})
  assert c.index == 2 and c.similarities["clip"][2] > 0.99
  with pytest.raises(ValueError, match="extra\\['dino'\\]"):
    features.choose_template(photo, templates, {"dino": 1.0})
  with pytest.raises(ValueError, match="templates\\[0\\]: missing extra feature 'clip'"):
    features.choose_template(photo, [features.FaceFeatures(templates[0].skin_hsv, templates[0].shape)],
                             {"clip": 1.0})
  with pytest.raises(ValueError, match="weights"):
    features.choose_template(photo, templates, {"skin": 0.0})


@needs_celeba
def test_photo_chooses_itself_among_photos():
  feats = [features.face_features(_photo(i)) for i in (5, 6, 7)]
  for i, f in enumerate(feats):
    assert features.choose_template(f, feats).index == i
