"""Face-analysis benchmark: detection, identity, 3D landmarks, control maps vs the official ones, timings.

  python -m experiments.bench_face                 # full tables, appends to docs/benchmarks.md
  python -m experiments.bench_face --photos 8 --no-append

Reads ../shared/data (override with SPLATSHOT_SHARED): CelebA-HQ photos for detection / identity /
timings, the 333 48-view template for triangulation, heatmaps and parsing, and the two 16-view real
captures for triangulation from real photos. Timings are medians over photos or views on a shared CPU.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from splatshot_jax import cameras as C
from splatshot_jax.face import align, controls, detect, features, identity, landmarks3d

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs", "benchmarks.md")
SHARED = Path(os.environ.get("SPLATSHOT_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


# CelebA-HQ photos of the same celebrity among the first 40 (found as the three pairs below 0.45,
# confirmed by eye); every other pair is two different people.
SAME_PERSON = {(8, 22), (12, 13), (27, 36)}


def _timed(fn, *args, **kwargs):
  t0 = time.perf_counter()
  out = fn(*args, **kwargs)
  return out, time.perf_counter() - t0


def bench_photos(n: int, cnn: bool) -> tuple[list[str], dict]:
  from splatshot_jax.io.images import load_image
  paths = sorted((SHARED / "data/photos/celeba-hq/images").glob("*.jpg"))[:n]
  _, t_load = _timed(detect._shape_predictor_68)
  imgs = [detect.as_rgb_uint8(load_image(p)) for p in paths]
  t_det, t_emb, t_feat, t_align, analyses, embs, mirror = [], [], [], [], [], [], []
  target = np.array([[200, 300], [350, 300], [275, 400], [220, 480], [330, 480]], np.float64)
  for img in imgs:
    a, t = _timed(detect.analyze_photo, img, warn_multiple=False)
    t_det.append(t)
    analyses.append(a)
    e, t = _timed(identity.identity_embedding, img, a)
    t_emb.append(t)
    embs.append(e)
    mirror.append(float(identity.embedding_distance(e, identity.identity_embedding(img[:, ::-1]))))
    _, t = _timed(features.face_features, img, a)
    t_feat.append(t)
    _, t = _timed(align.align_face, img, a.landmarks68, target, (802, 550))
    t_align.append(t)
  E = np.stack(embs)
  iu = np.triu_indices(len(E), 1)
  d_all = np.linalg.norm(E[:, None] - E[None], axis=-1)[iu]
  names = [int(p.stem) for p in paths]
  same = np.array([(names[i], names[j]) in SAME_PERSON for i, j in zip(*iu)], bool)
  d, d_same = d_all[~same], d_all[same]
  med = statistics.median
  rows = [
      "| measure | value |", "|---|---|",
      f"| photos (CelebA-HQ 1024²) with a face found (HOG) | {len(analyses)}/{len(imgs)} |",
      f"| face size (sqrt box area), median | {med([a.face_size_px for a in analyses]):.0f} px |",
      f"| identity distance photo vs its mirror: min / median / max | {min(mirror):.3f} / "
      f"{med(mirror):.3f} / {max(mirror):.3f} |",
      f"| identity distance between different people ({len(d)} pairs): min / median | "
      f"{d.min():.3f} / {np.median(d):.3f} |",
      f"| identity distance of the {len(d_same)} same-person pairs in the set "
      f"({', '.join(f'{a:05d}/{b:05d}' for a, b in sorted(SAME_PERSON))}) | "
      f"{', '.join(f'{x:.3f}' for x in d_same)} |",
      f"| load 68-point predictor (99 MB) | {t_load:.2f} s |",
      f"| `analyze_photo` (HOG + 68 points), median | {med(t_det):.3f} s |",
      f"| `identity_embedding` (given landmarks), median | {med(t_emb):.3f} s |",
      f"| `face_features` (skin HSV + shape), median | {med(t_feat):.3f} s |",
      f"| `align_face` 1024² → 550×802 (numpy bilinear, box prefilter), median | {med(t_align):.3f} s |",
  ]
  if cnn:
    _, t = _timed(detect.analyze_photo, imgs[0], detector="cnn")
    rows.append(f"| `analyze_photo(detector='cnn')` (mmod, incl. model load), 1 photo | {t:.2f} s |")
  return rows, {}


def _peaks(h):
  from numpy.lib.stride_tricks import sliding_window_view
  h = h.astype(float)
  mx = sliding_window_view(np.pad(h, 3), (7, 7)).max((-1, -2))
  ys, xs = np.nonzero((h == mx) & (h > 15))
  return np.stack([xs + 0.5, ys + 0.5], 1)


def bench_333() -> tuple[list[str], list[str], list[str]]:
  data = C.load_splatshot_views(SHARED / "data/multiview/nersemble-333-48views")
  (lms, ok), t_det = _timed(landmarks3d.detect_landmarks_views, data.images)
  res, t_tri = _timed(landmarks3d.triangulate_camera_landmarks, lms, ok, data.cameras)
  proj = np.asarray(landmarks3d.project_landmarks(res.points, data.cameras))
  H, W = data.cameras.height, data.cameras.width
  rows = [
      "| measure | value |", "|---|---|",
      f"| views with a detected face | {ok.sum()}/{len(ok)} |",
      f"| views used (rest rejected as failed detections) | {res.views_used.sum()} |",
      f"| **median reprojection error, used views** | **{res.median_reproj_error():.2f} px** |",
      f"| median reprojection error, per-point inliers / all detections | "
      f"{res.median_reproj_error('inliers'):.2f} / {res.median_reproj_error('all'):.2f} px |",
      f"| detection, 48 views 550×802 | {t_det:.1f} s |",
      f"| triangulation (RANSAC 400 pairs + GN), 68 points | {t_tri:.2f} s |",
  ]
  # Heatmaps vs the official ones on the 16 real-camera views.
  stats = {False: [], True: []}
  t_heat = []
  for v in range(16):
    off = data.controls["heatmap_control"][v, ..., 0].astype(float)
    for drop in (False, True):
      ours, t = _timed(controls.landmark_heatmap, proj[v], H, W, drop_jaw=drop)
      t_heat.append(t)
      ours = ours[..., 0].astype(float)
      cen = lambda h: np.array([(h.sum(0) * np.arange(W)).sum(), (h.sum(1) * np.arange(H)).sum()]) / h.sum()
      pts = proj[v][17:] if drop else proj[v]
      dist = np.linalg.norm(pts[:, None] - _peaks(off)[None], axis=-1).min(1)
      stats[drop].append([np.linalg.norm(cen(ours) - cen(off)), (ours > 0).mean() / (off > 0).mean(),
                          np.corrcoef(ours.ravel(), off.ravel())[0, 1], np.median(dist)])
  heat = ["| our heatmap vs official (views 0-15, mean) | centroid offset px | blob area ratio | "
          "pixel correlation | median distance of our points to an official blob px |",
          "|---|---|---|---|---|"]
  for drop in (False, True):
    m = np.mean(stats[drop], 0)
    heat.append(f"| dlib 68 {'without jaw (`drop_jaw=True`)' if drop else 'with jaw'} | {m[0]:.1f} | "
                f"{m[1]:.2f} | {m[2]:.3f} | {m[3]:.1f} |")
  heat.append(f"\n`landmark_heatmap` 550×802: {statistics.median(t_heat) * 1e3:.1f} ms median.\n")
  # Approximate parsing vs the official BiSeNet maps.
  groups = {"tuning views 4, 8, 10, 12": [4, 8, 10, 12],
            "other real cameras (0-15 minus tuning)": [v for v in range(16) if v not in (4, 8, 10, 12)],
            "interpolated cameras 16-47": list(range(16, 48))}
  classes = [controls.CLASS[k] for k in controls.APPROXIMATE_CLASSES]
  pars = ["| approximate parsing vs official | alpha | pixel acc | mIoU | skin | brows | eyes | nose | lips | "
          "neck | cloth | hair |", "|---" * 12 + "|"]
  t_par = []
  for gname, views in groups.items():
    for alpha_name in ("render (max channel > 3)", "official foreground"):
      acc = []
      for v in views:
        ref = controls.colors_to_labels(data.controls["parsing_control"][v])
        alpha = data.images[v].max(-1) > 3 if alpha_name.startswith("render") else ref > 0
        lab, t = _timed(controls.approximate_parsing, proj[v], alpha, H, W)
        t_par.append(t)
        a = controls.parsing_agreement(lab, ref, classes=classes)

        def g(*ks):  # IoU of a union of classes: left/right merged (BiSeNet swaps them between views)
          ids = [controls.CLASS[k] for k in ks]
          x, y = np.isin(lab, ids), np.isin(ref, ids)
          return (x & y).sum() / (x | y).sum() if (x | y).any() else np.nan

        acc.append([a["pixel_acc"], a["miou"], g("skin"), g("l_brow", "r_brow"), g("l_eye", "r_eye"),
                    g("nose"), g("u_lip", "l_lip", "mouth"), g("neck"), g("cloth"), g("hair")])
      m = np.nanmean(acc, 0)
      pars.append(f"| {gname} | {alpha_name} | " + " | ".join(f"{x:.3f}" if i < 2 else f"{x:.2f}"
                                                            for i, x in enumerate(m)) + " |")
  pars.append(f"\n`approximate_parsing` 550×802: {statistics.median(t_par) * 1e3:.0f} ms median. mIoU is "
              "over the classes it can produce (background, skin, brows, eyes, nose, mouth, lips, neck, "
              "cloth, hair) present in either map; ears/hat pixels of the official maps count as errors "
              "in pixel accuracy. The per-part columns merge left/right (and lips with mouth): the "
              "official BiSeNet maps swap l_brow/r_brow and l_eye/r_eye between views of this set "
              "(e.g. view 2 vs view 8), which the mIoU counts as errors.\n")
  return rows, heat, pars


def bench_real_captures() -> list[str]:
  rows = ["| set | views detected | used | median reprojection error (used / inliers / all) |",
          "|---|---|---|---|"]
  for name in ("nersemble-128-16views", "nersemble-306-16views"):
    data = C.load_multiview(SHARED / "data/multiview" / name)
    imgs = (data.load_images() * 255).round().astype(np.uint8)
    lms, ok = landmarks3d.detect_landmarks_views(imgs)
    res = landmarks3d.triangulate_camera_landmarks(lms, ok, data.cameras)
    rows.append(f"| {name} | {ok.sum()}/{len(ok)} | {res.views_used.sum()} | "
                f"{res.median_reproj_error():.2f} / {res.median_reproj_error('inliers'):.2f} / "
                f"{res.median_reproj_error('all'):.2f} px |")
  return rows


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--photos", type=int, default=40)
  p.add_argument("--cnn", action="store_true", help="also time dlib's CNN detector once")
  p.add_argument("--no-append", action="store_true")
  args = p.parse_args(argv)
  if not SHARED.exists():
    sys.exit(f"shared data absent: {SHARED}")
  photo_rows, _ = bench_photos(args.photos, args.cnn)
  print("\n".join(photo_rows), flush=True)
  tri_rows, heat_rows, par_rows = bench_333()
  print("\n".join(tri_rows + [""] + heat_rows + par_rows), flush=True)
  real_rows = bench_real_captures()
  print("\n".join(real_rows), flush=True)
  if args.no_append:
    return
  cmd = "python -m experiments.bench_face " + " ".join(sys.argv[1:] if argv is None else argv)
  date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  text = [f"\n### Face analysis — {date}\n", f"Command: `{cmd.strip()}`  ",
          f"Machine: CPU, {os.cpu_count()} cores visible (shared with other jobs); dlib HOG backend.\n",
          f"**Photos** ({args.photos} CelebA-HQ):\n", *photo_rows,
          "\n**3D landmarks, 333 template** (48 views; triangulated once, compared with each view's own "
          "dlib detection):\n", *tri_rows,
          "\n**3D landmarks, real 16-view captures** (photos, calibrated cameras):\n", *real_rows,
          "\n**Landmark heatmap vs the official `heatmap_control`** (official: mediapipe 68-subset without "
          "jaw, with lip/nose midline points; ours: projected triangulated dlib landmarks):\n", *heat_rows,
          "**Approximate parsing vs the official `parsing_control`** (BiSeNet), from projected 3D "
          "landmarks + a foreground mask:\n", *par_rows,
          "Notes: views rejected by the triangulation are dlib fits of its frontal model to near-profile "
          "views (points off the face); self-occluded jaw points are per-point outliers. Our heatmaps "
          "include dlib's jawline unless `drop_jaw=True`; the official ones have none but have 17 "
          "lip/nose midline blobs instead, so their isolated blobs are dimmer after min-max "
          "normalisation. Approximate parsing never produces ears, glasses, earrings, hat or neck "
          "lace (they become hair/skin); skin's upper edge (hairline), hair, neck and cloth are "
          "heuristic; brows, eyes, nose and lips follow the landmarks.\n"]
  os.makedirs(os.path.dirname(DOCS), exist_ok=True)
  with open(DOCS, "a") as f:
    f.write("\n".join(text) + "\n")
  print(f"appended to {os.path.normpath(DOCS)}")


if __name__ == "__main__":
  main()
