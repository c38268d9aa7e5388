"""Tests for splatshot_jax.templates: the folder format round-trips (and reads as SplatShot views),
broken folders give clear errors, the 48-view rig interpolates neighbours, label lifting recovers
the synthetic head's parts in held-out views, the synthetic template's controls agree with its
geometry, template choice, and (slow, shared data) a reduced template build of the 333 set."""

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from splatshot_jax import cameras as C
from splatshot_jax import synthetic
from splatshot_jax import templates as T
from splatshot_jax.face import controls, features
from splatshot_jax.gaussians import random_gaussians

SHARED = Path(os.environ.get("SPLATSHOT_SHARED",
                             Path(__file__).resolve().parents[1].parent / "shared"))
MULTIVIEW = SHARED / "data/multiview"


def _random_template(width=30, height=41, views=3, name="rand"):
  """A small template with arbitrary content (no rendering): sizes that are not multiples of 16."""
  rs = np.random.default_rng(0)
  cams = synthetic.head_rig(2 * views, width=width, height=height)[:views]
  lm = rs.normal(size=(68, 3)).astype(np.float32) * 0.05
  lm[5] = np.nan
  return T.Template(
      gaussians=random_gaussians(jax.random.PRNGKey(0), 50, sh_degree=1),
      cameras=cams,
      renders=jnp.asarray(rs.uniform(size=(views, height, width, 3)), jnp.float32),
      heatmaps=jnp.asarray(rs.integers(0, 256, (views, height, width, 3)), jnp.uint8),
      parsing=jnp.asarray(controls.PALETTE[rs.integers(0, 19, (views, height, width))]),
      landmarks3d=jnp.asarray(lm), valid=jnp.asarray([True, False, True][:views]), name=name,
      info=T.TemplateInfo(source="test", real_views=(0, 2), frontal_view=1, parsing_source="random",
                          approximate_classes=("skin", "hair"), metrics=(("heldout_psnr", 31.5),)))


def test_save_load_round_trip(tmp_path):
  t = _random_template()
  folder = T.save_template(tmp_path / "tpl", t)
  assert sorted(p.name for p in folder.iterdir()) == [
      "gaussians.ply", "manifest.json", "meta.json", "view_000.npz", "view_001.npz", "view_002.npz"]
  u = T.load_template(folder)
  assert (u.name, u.info) == (t.name, t.info)
  np.testing.assert_allclose(np.asarray(u.renders), np.asarray(t.renders), atol=0.5 / 255 + 1e-6)
  np.testing.assert_array_equal(np.asarray(u.heatmaps), np.asarray(t.heatmaps))
  np.testing.assert_array_equal(np.asarray(u.parsing), np.asarray(t.parsing))
  np.testing.assert_array_equal(np.asarray(u.valid), np.asarray(t.valid))
  np.testing.assert_array_equal(np.asarray(u.landmarks3d), np.asarray(t.landmarks3d))  # NaN row kept
  np.testing.assert_allclose(np.asarray(u.cameras.viewmat), np.asarray(t.cameras.viewmat), atol=1e-6)
  np.testing.assert_allclose(np.asarray(u.gaussians.means), np.asarray(t.gaussians.means), atol=1e-6)
  assert u.images is u.renders and np.array_equal(u.labels, t.labels)
  # The official layout: 30x41 renders padded centred by reflection to 32x48, controls unpadded.
  with np.load(folder / "view_001.npz") as z:
    assert z["padded_image"].shape == (48, 32, 3) and z["heatmap_control"].shape == (41, 30, 3)
    assert z["K"].shape == (3, 3) and z["viewmat"].shape == (4, 4) and not bool(z["valid"])
    pad = z["padded_image"]
  np.testing.assert_array_equal(pad[3:44, 1:31], np.round(np.asarray(t.renders[1]) * 255).astype(np.uint8))
  np.testing.assert_array_equal(pad[2], pad[3])  # OpenCV BORDER_REFLECT repeats the edge row
  meta = json.loads((folder / "meta.json").read_text())
  assert (meta["num_views"], meta["padded_width"], meta["padded_height"]) == (3, 32, 48)
  # cameras.load_multiview reads a template folder as a SplatShot view set.
  data = C.load_multiview(folder)
  assert data.padding == (3, 4, 1, 1) and len(data) == 3
  # Saving again replaces the template atomically (no leftovers beside it).
  T.save_template(folder, _random_template(name="second"))
  assert T.load_template(folder).name == "second"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["tpl"]


def test_load_errors(tmp_path):
  with pytest.raises(T.TemplateError, match="not a directory"):
    T.load_template(tmp_path / "nope")
  folder = T.save_template(tmp_path / "tpl", _random_template())
  (folder / "view_001.npz").unlink()
  (folder / "gaussians.ply").unlink()
  with pytest.raises(T.TemplateError, match=r"missing gaussians\.ply, view_001\.npz"):
    T.load_template(folder)
  (folder / "manifest.json").write_text(json.dumps({"name": "x", "num_views": "3"}))
  with pytest.raises(T.TemplateError, match="manifest.json: field 'num_views' must be a int"):
    T.load_template(folder)
  # A non-template folder is never replaced.
  other = tmp_path / "other"
  other.mkdir()
  (other / "keep.txt").write_text("x")
  with pytest.raises(T.TemplateError, match="refusing"):
    T.save_template(other, _random_template())
  assert (other / "keep.txt").exists()


def test_paper48_rig():
  real = synthetic.head_rig(16, width=40, height=40)  # two rows of 8, like NeRSemble
  rig, idx = T.make_rig(real, "paper48")
  assert len(rig) == 48 and idx == tuple(range(16))
  np.testing.assert_array_equal(np.asarray(rig.viewmat[:16]), np.asarray(real.viewmat))
  _, pairs, ts = T.interpolated_rig(real, 32)
  c = np.asarray(real.center, np.float64)
  new = np.asarray(rig.center, np.float64)[16:]
  np.testing.assert_allclose(ts, 0.5)
  np.testing.assert_allclose(new, 0.5 * (c[pairs[:, 0]] + c[pairs[:, 1]]), atol=1e-5)
  assert len({tuple(p) for p in pairs}) == 32  # 32 distinct pairs
  # Neighbours: every real camera takes part, and no pair is longer than twice the shortest one
  # (the rig's across-row diagonals); rows have 7 + 7 neighbour pairs, columns 8.
  assert set(pairs.ravel()) == set(range(16))
  length = np.linalg.norm(c[pairs[:, 0]] - c[pairs[:, 1]], axis=-1)
  assert length.max() < 2.0 * length.min()
  # The new cameras still look at the head: the optical axis passes within 3 mm of the rig's target at
  # 0.6 m (exactly through it between cameras of one row or column; ~2 mm, 0.2 deg, for diagonal pairs,
  # whose slerp is not a look-at rotation).
  R = np.asarray(rig.viewmat, np.float64)[16:, :3, :3]
  axis = R[:, 2]
  to_target = -new / np.linalg.norm(new, axis=-1, keepdims=True)
  miss = np.linalg.norm(np.cross(axis, to_target), axis=-1) * np.linalg.norm(new, axis=-1)
  assert miss.max() < 3e-3
  # Fewer pairs than requested cameras: several evenly spaced cameras per pair.
  _, pairs3, ts3 = T.interpolated_rig(real[:2], 3)
  assert pairs3.tolist() == [[0, 1]] * 3 and np.allclose(ts3, [0.25, 0.5, 0.75])
  assert T.make_rig(real, "auto")[0].viewmat.shape[0] == 48
  with pytest.raises(ValueError, match="expected 'own'"):
    T.make_rig(real, "ring")


def test_label_lifting_recovers_parts():
  scene = synthetic.make_head_scene(1200, 16, width=40, height=40)
  classes = T.synthetic_class_labels(scene.gaussians, scene.labels)
  truth = T.render_labels(scene.gaussians, scene.cameras, jax.nn.one_hot(classes, T.NUM_CLASSES), chunk=4)
  held = np.array([2, 5, 10, 13])
  train = np.setdiff1d(np.arange(16), held)
  logits, losses = T.lift_labels(scene.gaussians, scene.cameras[jnp.asarray(train)], jnp.asarray(truth[train]),
                                 num_iters=120, lr=0.2, views_per_iter=3, rng=jax.random.PRNGKey(0))
  assert float(losses[-10:].mean()) < 0.5 * float(losses[:10].mean())
  pred = T.render_labels(scene.gaussians, scene.cameras[jnp.asarray(held)], jax.nn.softmax(logits, -1), chunk=4)
  fg = (pred != 0) | (truth[held] != 0)
  acc = float((pred == truth[held])[fg].mean())
  # Labels are lifted onto the very Gaussians that rendered them, so only pixels mixing two parts can
  # disagree: at 40 px a part boundary is a ~1 px band around eyes / lips / hairline, ~5% of the head
  # pixels, of which about half go either way (measured 0.986).
  print(f"held-out pixel accuracy {acc:.3f}")
  assert acc > 0.95, acc
  # Small parts survive too (the eyes and lips are a few percent of the head).
  for name in ("l_eye", "r_eye", "hair", "neck"):
    k = controls.CLASS[name]
    assert (pred == k).sum() > 0.5 * (truth[held] == k).sum(), name


def test_synthetic_template_end_to_end(tmp_path):
  t = T.synthetic_template(num_gaussians=1000, size=48, rig="own")
  assert len(t) == 16 and t.renders.shape == (16, 48, 48, 3) and t.heatmaps.dtype == jnp.uint8
  assert bool(np.asarray(t.valid).all()) and t.info.approximate_classes == ()
  # Every parsing pixel is an official palette colour.
  pal = {tuple(c) for c in controls.PALETTE}
  assert {tuple(c) for c in np.asarray(t.parsing).reshape(-1, 3)} <= pal
  # The frontal view is one of the two middle yaws of the rig (yaw +-10 deg).
  assert t.info.frontal_view in (3, 4, 11, 12)
  # The geometric landmarks sit on the parts they name: eye centres on eye pixels (and on the right
  # side: the subject's left eye is image right), mouth centre on lips, nose tip on the nose.
  v = t.info.frontal_view
  uv = np.asarray(C.project_points(t.cameras[v], t.landmarks3d)[0])
  lab = t.labels[v]
  # At 48 px an eye is ~3 px wide, so look within 1 px of the projected point.
  near = lambda p: set(lab[int(p[1]) - 1:int(p[1]) + 2, int(p[0]) - 1:int(p[0]) + 2].ravel())
  assert controls.CLASS["r_eye"] in near(uv[36:42].mean(0)) and controls.CLASS["l_eye"] in near(uv[42:48].mean(0))
  assert uv[36:42, 0].mean() < uv[42:48, 0].mean()
  assert near(uv[[51, 57]].mean(0)) & {controls.CLASS["u_lip"], controls.CLASS["l_lip"]}
  assert controls.CLASS["nose"] in near(uv[30])
  # Heatmap blobs peak where the landmarks project.
  heat = np.asarray(t.heatmaps[v, ..., 0])
  assert heat[int(uv[30, 1]), int(uv[30, 0])] > 100
  T.save_template(tmp_path / "syn", t)
  u = T.load_template(tmp_path / "syn")
  assert u.info.frontal_view == v

  # Template choice: the features of a template pick that template; override and clear errors.
  dark = t.replace(renders=t.renders * 0.4, name="dark")
  photo = T.template_features(t)
  chosen, choice = T.choose_template(photo, [dark, t])
  assert chosen.name == t.name and choice.index == 1 and choice.scores[1] > choice.scores[0]
  assert T.choose_template(photo, [dark, t], override="dark")[0].name == "dark"
  with pytest.raises(ValueError, match="not one of the templates"):
    T.choose_template(photo, [dark, t], override="nobody")
  # The embedding hook: a callable image -> vector, compared by cosine.
  embed = lambda img: np.asarray(img, np.float32).mean((0, 1))
  photo_e = features.FaceFeatures(photo.skin_hsv, photo.shape, {"clip": embed(np.asarray(t.renders[v]) * 255)})
  _, choice = T.choose_template(photo_e, [dark, t], embedder=embed)
  assert set(choice.similarities) == {"skin", "shape", "clip"}


@pytest.mark.slow
@pytest.mark.skipif(not (MULTIVIEW / "nersemble-333-48views").exists(),
                    reason=f"shared data absent: {MULTIVIEW / 'nersemble-333-48views'}")
def test_build_333_reduced(tmp_path):
  """Reduced build of the official template's views: quarter resolution, 3000 iterations (the run in
  docs/benchmarks.md: held-out PSNR 30.8 dB; 1-2 h on a 2-core CPU). The bar is the issue's."""
  from configs import build_template as cfg_lib
  from experiments import build_template
  config = cfg_lib.get_config("333")
  config.data = str(MULTIVIEW / "nersemble-333-48views")
  config.scale = 0.25
  config.out_dir = str(tmp_path)
  config.fit.update(num_iters=3000, refine_start_iter=300, refine_stop_iter=2500, refine_every=100,
                    reset_every=0, sh_degree_interval=500, tile_size=8, tiles_per_step=32)
  config.template.lift_iters = 300
  res = build_template.run(config)
  t = T.load_template(tmp_path / "template")
  assert len(t) == 48 and t.info.approximate_classes == () and bool(np.asarray(t.valid).all())
  assert res["test"]["psnr"] > 30.0
  assert res["landmarks"]["views_used"] >= 30 and res["landmarks"]["median_reproj_px"] < 1.5
  assert t.info.frontal_view == 8  # the official frontal camera
  # Measured 0.73 with a 100-step lift (docs/benchmarks.md); the 300-step lift here should not do worse.
  assert res["heldout_parsing_sides_merged"]["pixel_acc"] > 0.7
