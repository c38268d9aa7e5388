"""Evaluation metrics on cases with known answers: a perfectly consistent avatar scores the 8-bit PSNR ceiling and a
shifted view scores worse; reprojection of a consistent analytic scene is ~0 and grows when a view is shifted; the
yaw sweep is the template's rig; the ArcFace input and embedding match a numpy reference; the official turntable
frames score what `identity_distance` gives frame by frame."""

import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import tiny_arcface
from configs import evaluate as evaluate_config
from splatshot_jax.jobs import evaluation, outputs
from splatshot_jax import sampler, templates
from splatshot_jax.cameras import orbit_rig
from splatshot_jax.face import detect, identity
from splatshot_jax.io import images as image_io
from splatshot_jax.render import render_views

SHARED = Path(os.environ.get("SPLATSHOT_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
CELEBA = SHARED / "data/photos/celeba-hq"
needs_celeba = pytest.mark.skipif(not (CELEBA / "videos").exists(), reason=f"shared data absent: {CELEBA}")


# ----------------------------------------------------------------------------- consistency of an avatar folder


def _write_avatar(folder: Path, gaussians, cameras, views: np.ndarray) -> None:
  """An avatar folder as a run writes it, with the given final views (no diffusion)."""
  v = len(cameras)
  result = sampler.SplatShotResult(
      gaussians=gaussians, base=gaussians, final_images=views, view_weights=np.full((v,), 1.0 / v, np.float32),
      x0_images=np.zeros((1, v, 4, 4, 3), np.uint8), renders=np.zeros((1, v, 4, 4, 3), np.uint8),
      discrepancy=np.asarray([0.3, 0.2], np.float32), eps_correction=np.zeros(2, np.float32),
      timesteps=np.asarray([500, 250], np.int32))
  outputs.write_outputs(result, folder, cameras=cameras, config={"photo": "", "refit": {"background": [0, 0, 0]}},
                        extra_metrics={"frontal_view": 0}, render=None)


def test_consistent_avatar_scores_the_psnr_ceiling_and_a_shifted_view_scores_worse(tmp_path):
  t = templates.synthetic_template(num_gaussians=400, size=48, rig="own")
  g, cams = t.gaussians, t.cameras[:4]
  renders = np.clip(np.asarray(render_views(g, cams, background=jnp.zeros(3)).rgb), 0, 1).astype(np.float64)
  # The ceiling: the renders against their own 8-bit copy (the views are stored as PNGs), float64, by hand.
  ceiling = 10 * np.log10(1.0 / ((renders - np.round(renders * 255) / 255) ** 2).mean(axis=(1, 2, 3)))
  config = evaluate_config.get_config("smoke")
  config.official_videos = ""

  _write_avatar(tmp_path / "same", g, cams, renders)
  ev = evaluation.evaluate_avatar(tmp_path / "same", config)
  np.testing.assert_allclose(ev["consistency"]["psnr"], ceiling, atol=0.02)
  assert min(ev["consistency"]["psnr"]) > 50.0
  np.testing.assert_allclose(ev["consistency"]["ssim"], 1.0, atol=1e-3)
  assert ev["identity"]["skipped"].startswith("no photo")
  assert (tmp_path / "same" / "evaluation.json").is_file()

  shifted = renders.copy()
  shifted[1] = np.roll(renders[1], 3, axis=1)  # view 1 is 3 px off: inconsistent with the avatar
  _write_avatar(tmp_path / "shifted", g, cams, shifted)
  ev2 = evaluation.evaluate_avatar(tmp_path / "shifted", config)
  psnr, psnr2 = np.asarray(ev["consistency"]["psnr"]), np.asarray(ev2["consistency"]["psnr"])
  assert psnr2[1] < 35.0 < psnr[1]
  np.testing.assert_allclose(np.delete(psnr2, 1), np.delete(psnr, 1), atol=1e-6)  # the other views are unchanged
  assert ev2["consistency"]["ssim"][1] < ev["consistency"]["ssim"][1] - 0.05
  # The diffusion views warped into their neighbours disagree more when one of them is shifted.
  rep, rep2 = ev["reprojection"], ev2["reprojection"]
  touched = [k for k, (i, j) in enumerate(rep["pairs"]) if 1 in (i, j)]
  assert touched and all(rep2["views_l1"][k] > 1.5 * rep["views_l1"][k] for k in touched)
  np.testing.assert_allclose(rep2["depth_rel"], rep["depth_rel"])  # the avatar itself did not change


# ----------------------------------------------------------------------------- reprojection of an analytic scene


def _plane_views(cams, tilt_deg=25.0, half=0.6):
  """Depth, alpha and colour of a textured square (side 2 * half) through the origin, by ray casting."""
  n = np.array([np.sin(np.radians(tilt_deg)), 0.0, np.cos(np.radians(tilt_deg))])  # plane normal
  e1 = np.array([np.cos(np.radians(tilt_deg)), 0.0, -np.sin(np.radians(tilt_deg))])
  e2 = np.array([0.0, 1.0, 0.0])
  h, w = cams.height, cams.width
  ys, xs = np.mgrid[0:h, 0:w] + 0.5
  out = []
  for vm, K in zip(np.asarray(cams.viewmat, np.float64), np.asarray(cams.K, np.float64)):
    R, t = vm[:3, :3], vm[:3, 3]
    center = -R.T @ t
    d_cam = np.stack([(xs - K[0, 2]) / K[0, 0], (ys - K[1, 2]) / K[1, 1], np.ones_like(xs)], -1)  # z = 1 rays
    d_world = d_cam @ R  # R^T d
    s = -(center @ n) / (d_world @ n)  # ray parameter = camera z (the ray has unit camera z)
    p = center + s[..., None] * d_world
    a, b = p @ e1, p @ e2
    inside = (np.abs(a) < half) & (np.abs(b) < half) & (s > 0)
    color = np.stack([0.5 + 0.4 * np.sin(7 * a), 0.5 + 0.4 * np.cos(5 * b), 0.5 + 0.3 * np.sin(4 * (a + b))], -1)
    out.append((np.where(inside, s, 0.0), inside.astype(np.float64), color * inside[..., None]))
  return out


def test_reprojection_of_a_consistent_scene_is_zero_and_grows_when_a_view_is_shifted():
  rng = np.random.default_rng(0)
  cams = orbit_rig(rng.normal(0, 0.02, 3), 3.0, [0.0, rng.uniform(6, 10)], [rng.uniform(-5, 5)], fov_deg=20.0,
                   width=64, height=56)
  (d0, a0, c0), (d1, a1, c1) = _plane_views(cams)
  r = evaluation.reprojection(d0, a0, cams[0], d1, a1, cams[1], images=[(c0, c1)])
  assert r["coverage"] > 0.8
  assert r["depth_rel"] < 1e-4 and r["color_l1"][0] < 0.01
  shift = lambda x: np.roll(x, 2, axis=1)
  r2 = evaluation.reprojection(d0, a0, cams[0], shift(d1), shift(a1), cams[1], images=[(c0, shift(c1))])
  assert r2["depth_rel"] > 30 * r["depth_rel"] + 1e-3 and r2["color_l1"][0] > 5 * r["color_l1"][0]
  # Nothing in common: no kept pixel, no number.
  r3 = evaluation.reprojection(d0, a0, cams[0], d1, np.zeros_like(a1), cams[1])
  assert r3["coverage"] == 0.0 and r3["depth_rel"] is None


def test_bilinear_matches_a_float64_brute_force():
  rng = np.random.default_rng(1)
  img = rng.random((7, 9, 2))
  x, y = rng.uniform(0.5, 8.5, 50), rng.uniform(0.5, 6.5, 50)
  got, inside = evaluation.bilinear(img, x, y)
  assert inside.all()
  for k in range(50):  # weights (1 - |dx|)(1 - |dy|) over the four pixels around (x - 0.5, y - 0.5)
    px, py = x[k] - 0.5, y[k] - 0.5
    want = sum(max(0, 1 - abs(px - i)) * max(0, 1 - abs(py - j)) * img[j, i] for j in range(7) for i in range(9))
    np.testing.assert_allclose(got[k], want, atol=1e-12)
  assert not evaluation.bilinear(img, np.array([0.2, 9.0]), np.array([3.0, 3.0]))[1].any()


def test_yaw_sweep_is_the_template_rig():
  rng = np.random.default_rng(2)
  target, yaws = rng.normal(0, 0.1, 3), [-40.0, -20.0, 0.0, 20.0, 40.0]
  up = np.array([0.1, 1.0, -0.05])
  rig = orbit_rig(target, 1.1, yaws, [0.0], fov_deg=22.0, width=40, height=56, up=up, front=(0.3, 0.0, 1.0))
  sweep = evaluation.sweep_cameras(rig, 2, [-40.0, 0.0, 40.0])
  np.testing.assert_allclose(np.asarray(sweep.viewmat), np.asarray(rig.viewmat)[[0, 2, 4]], atol=2e-5)
  np.testing.assert_allclose(np.asarray(sweep.K), np.asarray(rig.K)[[0, 2, 4]])
  uneven = orbit_rig(target, 1.1, [-40.0, -25.0, 0.0, 10.0, 40.0], [0.0], fov_deg=22.0, width=40, height=56, up=up)
  assert evaluation.neighbour_pairs(uneven) == [(0, 1), (1, 0), (2, 3), (3, 2), (4, 3)]


# ----------------------------------------------------------------------------- ArcFace


def test_arcface_input_and_embedding_match_a_numpy_reference(tmp_path):
  rng = np.random.default_rng(3)
  small = rng.integers(0, 256, (112, 112, 3)).astype(np.uint8)
  image = small.repeat(2, 0).repeat(2, 1)  # the face at twice the template's size: alignment = 2x box average
  pts = 2 * (evaluation.ARCFACE_TEMPLATE + 0.5)
  lm = np.zeros((68, 2))
  lm[list(detect.RIGHT_EYE)], lm[list(detect.LEFT_EYE)] = pts[0], pts[1]
  lm[30], lm[48], lm[54] = pts[2], pts[3], pts[4]
  want = ((small.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)
  np.testing.assert_allclose(evaluation.arcface_input(image, lm), want, atol=1e-5)

  model = evaluation.ArcFace(str(tiny_arcface.build(tmp_path / "arcface.onnx")))
  e = want.reshape(-1) @ tiny_arcface.weights()
  np.testing.assert_allclose(model.embed(image, lm), e / np.linalg.norm(e), atol=1e-5)
  with pytest.raises(evaluation.EvaluationError, match="config.arcface"):
    evaluation.ArcFace(str(tmp_path / "absent.onnx"))


# ----------------------------------------------------------------------------- the official turntables


@needs_celeba
def test_official_turntable_frames_score_identity_distance_frame_by_frame():
  photo, video = CELEBA / "images/00000.jpg", CELEBA / "videos/00000.mp4"
  reference = evaluation.face_embeddings(image_io.load_image(photo))
  res = evaluation.official_turntable(reference, video, stride=70)
  frames, _ = image_io.load_video(video)
  assert res["frames"] == [0, 70, 140]
  want = [identity.identity_distance(str(photo), image_io.to_uint8(frames[k])) for k in res["frames"]]
  np.testing.assert_allclose(res["dlib"], want, rtol=1e-6)
  assert res["dlib_median"] == pytest.approx(float(np.median(want)))
  assert all(d < 0.8 for d in want)  # the official avatar is recognisably the person
