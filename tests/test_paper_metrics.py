"""The paper's evaluation protocol (splatshot_jax/jobs/paper_metrics.py, splatshot_jax/face/scrfd.py) on known
answers: identical images give CSIM 1 and CV-CSIM 1; a face-free view is skipped and counted; the FID of a set
against itself is ~0 and rises with blur; the scored views are 005/006/008/011 by name; the FFHQ subset is the same
5,000 names twice; SCRFD decoding, the ArcFace crop, FID, KID, CLIP-IQA and AKD against float64 brute force."""

import os
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tiny_paper_models
from configs import evaluate as evaluate_config
from splatshot_jax.face import scrfd
from splatshot_jax.jobs import paper_metrics as pm
from splatshot_jax.jobs import preflight

scipy_linalg = pytest.importorskip("scipy.linalg")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  return tiny_paper_models.build_all(tmp_path_factory.mktemp("paper_models"), ffhq_images=6)


def _face_image(rng, h=120, w=100):
  """A dark image with a bright textured square: a "face" for the tiny SCRFD."""
  img = np.full((h, w, 3), 15, np.uint8)
  y0, y1, x0, x1 = int(0.2 * h), int(0.8 * h), int(0.2 * w), int(0.85 * w)
  img[y0:y1, x0:x1] = rng.integers(150, 256, (y1 - y0, x1 - x0, 3), dtype=np.uint8)
  return img


# ----------------------------------------------------------------------------- SCRFD and the ArcFace crop


def test_scrfd_decode_matches_a_per_anchor_loop():
  rng = np.random.default_rng(0)
  hw = (64, 96)
  outs = []
  for kind, c in (("score", 1), ("box", 4), ("kps", 10)):
    for s in (8, 16, 32):
      a = (hw[0] // s) * (hw[1] // s) * 2
      outs.append(rng.uniform(0, 1, (1, a, c)).astype(np.float32) if kind == "score" else
                  rng.normal(0, 2, (a, c)).astype(np.float32))
  scores, boxes, kps = scrfd.decode(outs, hw, threshold=0.5)
  ref_s, ref_b, ref_k = [], [], []
  for si, s in enumerate((8, 16, 32)):
    n = 0
    for y in range(hw[0] // s):
      for x in range(hw[1] // s):
        for _ in range(2):  # 2 anchors per location, adjacent
          sc, d, k = outs[si][0, n, 0], outs[3 + si][n] * s, outs[6 + si][n] * s
          if sc >= 0.5:
            cx, cy = x * s, y * s
            ref_s.append(sc)
            ref_b.append([cx - d[0], cy - d[1], cx + d[2], cy + d[3]])
            ref_k.append([[cx + k[2 * j], cy + k[2 * j + 1]] for j in range(5)])
          n += 1
  np.testing.assert_array_equal(scores, ref_s)
  np.testing.assert_allclose(boxes, ref_b, atol=1e-4)
  np.testing.assert_allclose(kps, ref_k, atol=1e-4)


def test_nms_keeps_the_best_of_overlapping_boxes():
  boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.5]], np.float32)
  scores = np.array([0.6, 0.9, 0.8, 0.7], np.float32)
  np.testing.assert_array_equal(scrfd.nms(boxes, scores), [1, 2])


def _cv2_bilinear(img, m, out_hw, border):
  """OpenCV's convention by brute force: output pixel index (x, y) samples the source at M^-1 (x, y), both in
  pixel-index coordinates; bilinear; "constant" = 0 outside, "edge" = clamped indices."""
  a = np.linalg.inv(np.vstack([m, [0, 0, 1]]))
  h, w = img.shape[:2]
  out = np.zeros(out_hw + (img.shape[2],))
  for y in range(out_hw[0]):
    for x in range(out_hw[1]):
      u, v, _ = a @ [x, y, 1.0]
      x0, y0 = int(np.floor(u)), int(np.floor(v))
      for dy, wy in ((0, 1 - (v - y0)), (1, v - y0)):
        for dx, wx in ((0, 1 - (u - x0)), (1, u - x0)):
          xi, yi = x0 + dx, y0 + dy
          if border == "edge":
            xi, yi = min(max(xi, 0), w - 1), min(max(yi, 0), h - 1)
          elif not (0 <= xi < w and 0 <= yi < h):
            continue
          out[y, x] += wy * wx * img[yi, xi]
  return out


def test_norm_crop_is_opencv_warp_of_the_index_coordinate_similarity():
  rng = np.random.default_rng(1)
  img = rng.integers(0, 256, (90, 80, 3), dtype=np.uint8)
  kps = scrfd.ARCFACE_TEMPLATE * 0.55 + rng.normal([8, 5], 1.5, (5, 2))  # a small, shifted face (2x shrink)
  crop = scrfd.norm_crop(img, kps)
  # insightface: skimage's SimilarityTransform (Umeyama) from kps to the template, in pixel-index coordinates.
  src, dst = kps - kps.mean(0), scrfd.ARCFACE_TEMPLATE - scrfd.ARCFACE_TEMPLATE.mean(0)
  u, sig, vt = np.linalg.svd(dst.T @ src / 5)
  r = u @ vt
  scale = sig.sum() / (src ** 2).sum() * 5
  m = np.hstack([scale * r, (scrfd.ARCFACE_TEMPLATE.mean(0) - scale * r @ kps.mean(0))[:, None]])
  ref = _cv2_bilinear(img.astype(np.float64), m, (112, 112), "constant")
  assert np.abs(crop.astype(np.float64) - ref).max() <= 1.0  # uint8 rounding


def test_detector_input_is_opencv_resize_pasted_top_left():
  rng = np.random.default_rng(2)
  img = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
  det, scale = scrfd.detector_input(img, 32)
  new_h = int(32 * 50 / 70)
  assert scale == new_h / 50 and not det[new_h:].any()
  # cv2.resize INTER_LINEAR: source index = (dst + 0.5) / scale - 0.5, clamped at the borders.
  m = np.array([[32 / 70, 0, 0.5 * 32 / 70 - 0.5], [0, new_h / 50, 0.5 * new_h / 50 - 0.5]])
  ref = _cv2_bilinear(img.astype(np.float64), m, (new_h, 32), "edge")
  assert np.abs(det[:new_h].astype(np.float64) - ref).max() <= 1.0


def test_embeddings_equal_insightface_face_analysis_on_the_same_images(models):
  """Our detector + crop + recognition against insightface's own FaceAnalysis with the same (tiny) model files."""
  app_module = pytest.importorskip("insightface.app", reason="the insightface package is not installed")
  pytest.importorskip("cv2", reason="insightface needs opencv")
  app = app_module.FaceAnalysis(name=str(Path(models["insightface"]) / "buffalo_l"),
                                allowed_modules=["detection", "recognition"], providers=["CPUExecutionProvider"])
  app.prepare(ctx_id=-1, det_size=(640, 640))
  ours = scrfd.InsightFace(models["insightface"])
  rng = np.random.default_rng(10)
  for h, w in ((303, 411), (617, 500), (314, 213)):
    img = _face_image(rng, h, w)
    faces = app.get(np.ascontiguousarray(img[:, :, ::-1]))  # insightface takes BGR
    det = ours.detect(img)
    # cv2.resize rounds in fixed point: an anchor whose score sits on the 0.5 line may differ (tiny model only).
    assert abs(len(faces) - len(det)) <= 0.01 * len(faces)
    theirs = max(faces, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
    np.testing.assert_allclose(det.kps[det.largest()], theirs.kps, atol=1e-3)
    assert float(ours.embed(img) @ theirs.embedding) / np.linalg.norm(theirs.embedding) > 0.9999


# ----------------------------------------------------------------------------- CSIM and CV-CSIM


def test_identical_images_give_csim_1_and_a_face_free_view_is_skipped_and_counted(models):
  face = scrfd.InsightFace(models["insightface"], det_size=160)
  rng = np.random.default_rng(3)
  img = _face_image(rng)
  e = face.embed(img)
  assert e is not None and abs(np.linalg.norm(e) - 1) < 1e-5
  dark = np.full_like(img, 10)
  assert face.embed(dark) is None
  other = _face_image(rng)
  views = [[face.embed(img)] * 4, [face.embed(img), face.embed(dark), face.embed(img), face.embed(img)]]
  c, cv = pm.csim([e, e], views), pm.cv_csim(views)
  assert c["mean"] == pytest.approx(1.0, abs=1e-6) and c["pairs"] == 7 and c["skipped_views"] == 1
  assert cv["mean"] == pytest.approx(1.0, abs=1e-6) and cv["pairs"] == 6 + 3 and cv["skipped_pairs"] == 3
  assert pm.cosine(e, e * 1.001) == 1.0 and pm.cosine(e, -e * 1.001) == -1.0  # clamped to [-1, 1]
  # A different face scores less than 1; a photo without a face skips its views.
  c2 = pm.csim([e, None], [[face.embed(other)] * 4, [e] * 4])
  assert c2["mean"] < 1 - 1e-3 and c2["pairs"] == 4 and c2["skipped_photos"] == 1


# ----------------------------------------------------------------------------- FID, KID, CLIP-IQA, AKD


def test_frechet_distance_and_kid_match_float64_references():
  rng = np.random.default_rng(4)
  a, b = rng.normal(0, 1, (60, 5)), rng.normal(0.3, 1.4, (50, 5)) @ rng.normal(0, 1, (5, 5))
  mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
  mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
  ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy_linalg.sqrtm(s1 @ s2).real)
  assert pm.fid(a, b) == pytest.approx(ref, rel=1e-9)
  # KID: the unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3 by double loops.
  k = lambda x, y: (x @ y / 5 + 1) ** 3
  m, n = 8, 7
  x, y = a[:m], b[:n]
  kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
  kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
  assert pm.mmd2_poly(x, y) == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-9)
  # Subsets capped at the smaller set (7): every draw of the 7 + 7 is the same sets, in another order.
  mean, std = pm.kid(x[:7], y, subsets=3, subset_size=100)
  assert mean == pytest.approx(pm.mmd2_poly(x[:7], y), rel=1e-9) and std < 1e-9


def test_fid_of_a_set_against_itself_is_zero_and_rises_with_blur(models):
  from PIL import ImageFilter
  net = pm.fid_network(models["fid_weights"])
  rng = np.random.default_rng(5)
  imgs = [Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).resize((96, 96), Image.NEAREST)
          for _ in range(40)]
  feats = lambda ims: pm.batched_features(net, [pm.resized(np.asarray(i), pm.FID_SIZE, "lanczos") for i in ims], 8)
  ref = feats(imgs)
  assert abs(pm.fid(ref, ref)) < 1e-6
  scores = [pm.fid(ref, feats([i.filter(ImageFilter.GaussianBlur(r)) for i in imgs])) for r in (1, 4, 16)]
  assert 1e-3 < scores[0] < scores[1] < scores[2]


def test_clip_iqa_is_the_softmax_of_100_cosines():
  rng = np.random.default_rng(6)
  text = rng.normal(0, 1, (2, 6))
  img = np.vstack([3 * text[0], text[1], rng.normal(0, 1, (3, 6))])
  got = pm.clip_iqa_scores(img, text)
  cos = lambda u, v: u @ v / np.linalg.norm(u) / np.linalg.norm(v)
  ref = [1 / (1 + np.exp(100 * (cos(i, text[1]) - cos(i, text[0])))) for i in img]
  np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-300)
  assert got[0] > 0.99 and got[1] < 0.01


def test_akd_is_invariant_to_translation_and_scale_and_measures_inter_ocular_units():
  rng = np.random.default_rng(7)
  lm = rng.uniform(0, 100, (68, 2))
  assert pm.akd(lm, 2.5 * lm + [30, -7]) == pytest.approx(0.0, abs=1e-9)
  iod = np.linalg.norm(lm[42:48].mean(0) - lm[36:42].mean(0))
  moved = lm.copy()
  moved[48:68] += [0.1 * iod, 0.0]  # the mouth (no eye point) moved by a tenth of the inter-ocular distance
  assert pm.akd(lm, moved) == pytest.approx(20 / 68 * 0.1, rel=1e-9)


# ----------------------------------------------------------------------------- which images


def test_views_are_selected_by_name_on_a_run_folder(tmp_path):
  folder = tmp_path / "00000"
  (folder / "views").mkdir(parents=True)
  for i in range(16):  # view i holds the value 10 * i
    Image.fromarray(np.full((8, 8, 3), 10 * i, np.uint8)).save(folder / "views" / f"view_{i:03d}.png")
  rgb = np.arange(16, dtype=np.float32)[:, None, None, None] * np.full((16, 8, 8, 3), 10 / 255, np.float32)
  pm.save_renderings(folder, rgb, frontal=0)
  files = pm.view_files(folder)
  for source in ("renders", "diffusion"):
    assert [p.name for p in files[source]] == ["view_005.png", "view_006.png", "view_008.png", "view_011.png"]
    assert [int(pm.load_rgb(p)[0, 0, 0]) for p in files[source]] == [50, 60, 80, 110]
  assert sorted(p.name for p in (folder / pm.RENDERINGS).iterdir()) == [
      "view_000.png", "view_005.png", "view_006.png", "view_008.png", "view_011.png"]


def test_ffhq_subset_is_the_same_5000_names_twice_and_the_authors_draw(tmp_path):
  names = [Path(f"ffhq/{i:05d}.png") for i in range(5200)] + [Path(f"ffhq/x{i:04d}.jpg") for i in range(300)]
  a, b = pm.sample_reference(names), pm.sample_reference(list(names))
  assert len(a) == 5000 and a == b and len(set(a)) == 5000
  random.seed(42)  # the authors: random.seed(42); random.sample(sorted PNGs + sorted JPGs, 5000)
  assert a == random.sample(names, 5000)
  assert pm.sample_reference(names, seed=43) != a and len(pm.sample_reference(names, n=10_000)) == 5500
  # The listing: PNGs sorted, then JPGs sorted, in subfolders too.
  for rel in ("b/2.jpg", "a/1.png", "c.png", "a/0.jpg", "b/0.png", "notes.txt"):
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).touch()
  listed = [p.relative_to(tmp_path).as_posix() for p in pm.reference_files(tmp_path)]
  assert listed == ["a/1.png", "b/0.png", "c.png", "a/0.jpg", "b/2.jpg"]
  got = pm.ffhq_subset(tmp_path, n=3)
  random.seed(42)
  assert got == random.sample(pm.reference_files(tmp_path), 3)


# ----------------------------------------------------------------------------- config checks


def test_preflight_names_the_paper_protocols_missing_files(tmp_path, models):
  config = evaluate_config.get_config("paper")
  config.target = str(tmp_path)
  assert preflight.check_evaluate(config, reference=evaluate_config.get_config()) == []
  config.update(models)
  assert preflight.check_evaluate(config, reference=evaluate_config.get_config()) == []
  config.insightface = str(tmp_path)
  config.fid_weights = str(tmp_path / "nope.pth")
  config.clip_iqa_text = ""
  config.protocol = "papers"
  fields = {p.field for p in preflight.check_evaluate(config)}
  assert fields == {"config.insightface", "config.fid_weights", "config.clip_iqa_text", "config.protocol"}


# ----------------------------------------------------------------------------- the job on a batch folder


def test_the_paper_protocol_on_a_batch_writes_paper_metrics_and_the_report_table(tmp_path, models, monkeypatch):
  from splatshot_jax import sampler, synthetic
  from splatshot_jax.jobs import evaluation, outputs

  (g, _), cams = synthetic.head_gaussians(150), synthetic.head_rig(12, width=32, height=32)  # views 005...011 exist
  rng = np.random.default_rng(9)
  views = [np.clip(_face_image(rng, 32, 32)[None] / 255.0 + rng.uniform(-0.1, 0.1, (12, 1, 1, 1)), 0, 1)
           for _ in range(2)]
  photo = tmp_path / "photo.png"
  Image.fromarray(_face_image(np.random.default_rng(8))).save(photo)
  for name, final in zip(("00000", "00002"), views):
    v = len(cams)
    result = sampler.SplatShotResult(
        gaussians=g, base=g, final_images=final.astype(np.float32), view_weights=np.full((v,), 1.0 / v, np.float32),
        x0_images=np.zeros((1, v, 4, 4, 3), np.uint8), renders=np.zeros((1, v, 4, 4, 3), np.uint8),
        discrepancy=np.asarray([0.3], np.float32), eps_correction=np.zeros(1, np.float32),
        timesteps=np.asarray([500], np.int32))
    outputs.write_outputs(result, tmp_path / "batch" / name, cameras=cams,
                          config={"photo": str(photo), "refit": {"background": [1, 1, 1]}},
                          extra_metrics={"frontal_view": 0}, render=None)
  # The avatar "renders" dark grey (no face for the tiny detector): no JAX compile, and the renderings' CSIM has
  # every view skipped and counted.
  def dark_renders(gaussians, cameras, **_):
    v, h, w = len(cameras), cameras.height, cameras.width
    return {"rgb": np.full((v, h, w, 3), 0.2, np.float32), "alpha": np.ones((v, h, w), np.float32),
            "depth": np.ones((v, h, w), np.float32)}
  monkeypatch.setattr(evaluation, "render_maps", dark_renders)
  config = evaluate_config.get_config("paper")
  config.update(models)
  config.update(target=str(tmp_path / "batch"), official_videos="", yaws=(0.0,), gif_frames=0, det_size=96,
                kid_subsets=2)
  res = evaluation.evaluate(config)["paper"]
  assert (tmp_path / "batch" / "paper_metrics.json").is_file()
  assert res["photos"] == 2 and res["views"] == [5, 6, 8, 11] and res["ffhq"]["images"] == 6
  for source in ("renders", "diffusion"):
    m = res[source]
    assert m["images"] == 8 and res["missing_files"][source] == 0
    assert m["csim"]["pairs"] + m["csim"]["skipped_views"] == 8 and m["csim"]["skipped_photos"] == 0
    assert m["cv_csim"]["pairs"] + m["cv_csim"]["skipped_pairs"] == 12
    assert np.isfinite(m["fid"]) and 0.0 <= m["clip_iqa"] <= 1.0 and np.isfinite(m["kid_mean"])
    assert m["akd"]["pairs"] + m["akd"]["skipped"] == 2  # dlib finds no face in the synthetic photo: skipped
  # The diffusion outputs are the bright "faces" of the tiny detector, the avatar's renders are not.
  assert res["diffusion"]["csim"]["pairs"] == 8 and res["diffusion"]["cv_csim"]["pairs"] == 12
  assert res["renders"]["csim"]["skipped_views"] == 8 and res["renders"]["views_without_face"] == 8
  assert res["renders"]["csim"]["mean"] is None and res["renders"]["fid"] != res["diffusion"]["fid"]
  assert [p.name for p in sorted((tmp_path / "batch/00000" / pm.RENDERINGS).iterdir())] == [
      "view_000.png", "view_005.png", "view_006.png", "view_008.png", "view_011.png"]
  page = (tmp_path / "batch" / "report.html").read_text()
  assert "The paper&#x27;s protocol" in page or "The paper's protocol" in page
  assert "cannot be scored by this protocol" in page and "3DGS renderings" in page


@pytest.mark.skipif(not os.environ.get("SPLATSHOT_TORCHMETRICS_PARITY"),
                    reason="minutes on a 2-core CPU (Inception-v3 at 299 px): set SPLATSHOT_TORCHMETRICS_PARITY=1, with "
                           "torch-fidelity and torchmetrics installed")
def test_fid_and_kid_equal_torchmetrics_with_the_same_inception_weights(tmp_path):
  """FID / KID through torch-fidelity's Inception (config.fid_weights=.pth) against torchmetrics' own metrics, the
  paper's implementation, on the same images and the same (here random) weights file."""
  torch = pytest.importorskip("torch")
  fidelity = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3", reason="torch-fidelity absent")
  tm_fid = pytest.importorskip("torchmetrics.image.fid", reason="torchmetrics absent")
  tm_kid = pytest.importorskip("torchmetrics.image.kid")
  # A weights file of the FID Inception's layout with random values (the real one is the user's).
  net_cls = fidelity.FeatureExtractorInceptionV3
  orig = net_cls.load_state_dict
  try:
    net_cls.load_state_dict = lambda self, sd: None
    fidelity.load_state_dict_from_url = lambda *a, **k: {}
    torch.manual_seed(0)
    net = net_cls("inception-v3-compat", ["2048"])
  finally:
    net_cls.load_state_dict = orig
  torch.save(net.state_dict(), tmp_path / "inception.pth")
  rng = np.random.default_rng(11)
  real = [rng.integers(0, 256, (40, 30, 3), dtype=np.uint8) for _ in range(3)]
  fake = [np.clip(r.astype(int) + rng.integers(-60, 60, r.shape), 0, 255).astype(np.uint8) for r in real]
  prep = lambda ims: [pm.resized(i, pm.FID_SIZE, "lanczos") for i in ims]
  ours = pm.fid_network(tmp_path / "inception.pth")
  fr, ff = pm.batched_features(ours, prep(real)), pm.batched_features(ours, prep(fake))
  # torchmetrics as the authors call it: float images in [0, 1] (PIL LANCZOS 299, / 255), normalize=True.
  as_float = lambda ims: torch.from_numpy(np.stack([pm.resized(i, pm.FID_SIZE, "lanczos") for i in ims])
                                          .astype(np.float32) / 255.0).permute(0, 3, 1, 2)
  inception = tm_fid.NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                        feature_extractor_weights_path=str(tmp_path / "inception.pth"))
  # With a network object torchmetrics skips its own `(imgs * 255).byte()` of normalize=True: done here as it does.
  as_byte = lambda ims: (as_float(ims) * 255).byte()
  fid = tm_fid.FrechetInceptionDistance(feature=inception)
  fid.update(as_byte(real), real=True)
  fid.update(as_byte(fake), real=False)
  assert pm.fid(fr, ff) == pytest.approx(float(fid.compute()), rel=1e-4)
  kid = tm_kid.KernelInceptionDistance(feature=inception, subsets=1, subset_size=3)
  kid.update(as_byte(real), real=True)
  kid.update(as_byte(fake), real=False)
  assert pm.mmd2_poly(fr, ff) == pytest.approx(float(kid.compute()[0]), rel=1e-4)
