"""Does the 3D feedback make views consistent? The measurement behind `experiments/feedback_ablation.py`.

Setup (all self-generated, CPU-sized): K synthetic heads that share a geometry but not their colours (skin, hair,
lips palettes), rendered on the same camera rig. The prior is the exact denoiser of that image set with each view
restricted to the images taken from its own camera (`AnalyticPrior` + `same_view_mask`): a perfect "diffusion
model" of these K subjects that knows nothing about 3D. The base template is the same head in the mean palette,
equidistant from every subject. From the same noise we sample the V views twice:
  * plain: feedback off -> every view falls independently to some subject (inconsistent across views);
  * SplatShot: the refit-and-correct step at every timestep.
Consistency is measured the way the issue asks: fit a 3DGS to the V final views and report the PSNR of its
renders against those views (a consistent set can be explained by one 3D model), and render it at held-out cameras
against the ground truth of the closest subject (where a 3D head must agree with a real one).
"""

from __future__ import annotations

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np

from splatshot_jax import fit as fit_lib
from splatshot_jax import guidance, metrics, sampler, synthetic
from splatshot_jax.diffusion import ddim
from splatshot_jax.gaussians import Gaussians, rgb_to_sh_dc
from splatshot_jax.priors.analytic import AnalyticCond, make_analytic_prior, same_view_mask

# Per-subject colours of (skin, hair, lips); other parts keep synthetic.PART_COLORS. Far apart on purpose: a view
# that picked another subject is unmistakable.
PALETTES = np.array([
    [[0.87, 0.68, 0.56], [0.24, 0.14, 0.07], [0.72, 0.27, 0.30]],  # pale skin, dark brown hair
    [[0.45, 0.30, 0.22], [0.90, 0.78, 0.35], [0.50, 0.20, 0.22]],  # dark skin, blond hair
    [[0.55, 0.70, 0.90], [0.80, 0.15, 0.10], [0.20, 0.25, 0.60]],  # blue skin, red hair
    [[0.65, 0.85, 0.50], [0.10, 0.10, 0.12], [0.85, 0.45, 0.60]],  # green skin, black hair
], np.float32)


@dataclasses.dataclass(frozen=True)
class AblationSetup:
  """Static sizes of the ablation (defaults: the figure in the README; `smoke` shrinks them)."""

  num_subjects: int = 3
  num_views: int = 8  # sampled views (two rows of head_rig)
  num_heldout: int = 4  # ground-truth-only cameras between the sampled ones
  size: int = 32  # image side, px
  num_gaussians: int = 600
  yaw_range: float = 60.0
  consistency_iters: int = 300  # the 3DGS fitted to each run's final views


def recolor(g: Gaussians, labels: np.ndarray, palette: np.ndarray) -> Gaussians:
  """The synthetic head with (skin, hair, lips) colours from palette (3, 3); nose/neck follow the skin."""
  colors = synthetic.PART_COLORS.copy()
  skin, hair, lips = palette
  for part, rgb in (("skin", skin), ("nose", skin * 1.03), ("neck", skin * 0.92), ("hair", hair), ("lips", lips)):
    colors[synthetic.PARTS.index(part)] = np.clip(rgb, 0, 1)
  sh = np.asarray(g.sh).copy()
  sh[:, 0] = np.asarray(rgb_to_sh_dc(jnp.asarray(colors[labels])))
  return dataclasses.replace(g, sh=jnp.asarray(sh))


def make_setup(setup: AblationSetup, diffusion_schedule: ddim.DDIMSchedule):
  """Subjects, rig, analytic prior and base template.

  Returns a namespace with: subjects (K Gaussians), base (Gaussians, mean palette), cameras (V), heldout (Vh),
  images (K, V, H, W, 3) ground truth at the sampled cameras, heldout_images (K, Vh, H, W, 3),
  template (gaussians/cameras/images of the base), prior, cond.
  """
  from splatshot_jax.render import check_overflow, render_views  # pylint: disable=import-outside-toplevel

  g, labels = synthetic.head_gaussians(setup.num_gaussians, sh_degree=0, seed=0)
  subjects = [recolor(g, labels, p) for p in PALETTES[: setup.num_subjects]]
  base = recolor(g, labels, PALETTES[: setup.num_subjects].mean(0))
  rows = 2
  per_row = setup.num_views // rows
  yaws = np.linspace(-setup.yaw_range, setup.yaw_range, per_row)
  cams = synthetic.head_rig(setup.num_views, width=setup.size, height=setup.size, yaw_range=setup.yaw_range)
  # Held-out cameras: halfway between sampled yaws, at zero pitch.
  mid = 0.5 * (yaws[:-1] + yaws[1:])
  mid = mid[np.linspace(0, len(mid) - 1, setup.num_heldout).round().astype(int)]
  from splatshot_jax.cameras import orbit_rig  # pylint: disable=import-outside-toplevel
  heldout = orbit_rig(np.zeros(3), 0.6, mid, [0.0], width=setup.size, height=setup.size, fov_deg=30.0)

  def render_all(gs, c):
    out = render_views(gs, c)
    check_overflow(out)
    return np.asarray(out.rgb)

  images = np.stack([render_all(s, cams) for s in subjects])  # (K, V, H, W, 3)
  heldout_images = np.stack([render_all(s, heldout) for s in subjects])
  template_images = render_all(base, cams)
  k, v = images.shape[:2]
  prior = make_analytic_prior(images.reshape((k * v,) + images.shape[2:]),
                              np.asarray(diffusion_schedule.alphas_cumprod))
  # Member i = subject i // V at camera i % V; each view may only come from its own camera.
  cond = AnalyticCond(same_view_mask(np.tile(np.arange(v), k), np.arange(v)))
  template = types.SimpleNamespace(gaussians=base, cameras=cams, images=template_images)
  return types.SimpleNamespace(subjects=subjects, base=base, cameras=cams, heldout=heldout, images=images,
                               heldout_images=heldout_images, template=template, prior=prior, cond=cond)


def nearest_subject(views: np.ndarray, images: np.ndarray) -> np.ndarray:
  """Which subject each view looks like: (V, H, W, 3), (K, V, H, W, 3) -> (V,) int (min L2 at that camera)."""
  d = np.mean((images - views[None]) ** 2, axis=(2, 3, 4))  # (K, V)
  return np.argmin(d, axis=0)


def consistency(views, base: Gaussians, cameras, heldout, heldout_images, iters: int, rng) -> dict:
  """Fits a 3DGS to V views (uniform view sampling) and scores how well one 3D model explains them.

  Returns {"fit_psnr": mean PSNR(render_v, view_v) in dB, "heldout_psnr": max over subjects of the mean PSNR of
  the fitted model's renders at held-out cameras vs that subject's ground truth, "fitted": the Gaussians}.
  """
  from splatshot_jax.render import render_views  # pylint: disable=import-outside-toplevel

  cfg = fit_lib.FitConfig(num_iters=iters)
  fitted = fit_lib.fit(base, cameras, jnp.asarray(views), cfg, rng=rng).gaussians
  renders = render_views(fitted, cameras).rgb
  fit_psnr = float(jnp.mean(metrics.psnr(renders, jnp.asarray(views))))
  held = render_views(fitted, heldout).rgb
  per_subject = [float(jnp.mean(metrics.psnr(held, jnp.asarray(h)))) for h in heldout_images]
  return {"fit_psnr": fit_psnr, "heldout_psnr": max(per_subject), "fitted": fitted}


def run_ablation(setup: AblationSetup, scfg: sampler.SamplerConfig, seed: int = 0, *, scene=None) -> dict:
  """Samples the V views with and without feedback from the same noise and measures both.

  Args:
    setup: AblationSetup.
    scfg: SamplerConfig of the feedback run (the plain run is the same with guidance.feedback False).
    seed: PRNG seed shared by both runs (same initial noise).
    scene: Scene3D for the refit; default `guidance.gaussian_scene()` (the official refit).
  Returns:
    dict with per-run results ("plain", "feedback"): SplatShotResult, metrics, nearest subjects; and the setup.
  """
  schedule = sampler.resolve_schedule(scfg)  # the analytic prior is built for the run's schedule
  s = make_setup(setup, schedule)
  scene = scene or guidance.gaussian_scene()
  runs = {}
  for name, feedback in (("plain", False), ("feedback", True)):
    cfg = dataclasses.replace(scfg, guidance=dataclasses.replace(scfg.guidance, feedback=feedback, sdi=False))
    res = sampler.run_splatshot(s.prior, s.template, s.cond, cfg, jax.random.key(seed), scene=scene,
                                schedule=schedule)
    score = consistency(res.final_images, s.base, s.cameras, s.heldout, s.heldout_images,
                        setup.consistency_iters, jax.random.key(seed + 1))
    runs[name] = {
        "result": res,
        "fit_psnr": score["fit_psnr"],
        "heldout_psnr": score["heldout_psnr"],
        "fitted": score["fitted"],
        "subjects": nearest_subject(res.final_images, s.images),
    }
  runs["setup"] = s
  runs["gain_fit_db"] = runs["feedback"]["fit_psnr"] - runs["plain"]["fit_psnr"]
  runs["gain_heldout_db"] = runs["feedback"]["heldout_psnr"] - runs["plain"]["heldout_psnr"]
  return runs


def summary(runs: dict) -> dict:
  """JSON-ready numbers of `run_ablation`."""
  out = {}
  for name in ("plain", "feedback"):
    r = runs[name]
    out[name] = {"fit_psnr_db": r["fit_psnr"], "heldout_psnr_db": r["heldout_psnr"],
                 "subject_per_view": [int(i) for i in r["subjects"]],
                 "distinct_subjects": int(len(set(r["subjects"].tolist()))),
                 "discrepancy_per_step": [float(x) for x in r["result"].discrepancy]}
  out["gain_fit_db"] = runs["gain_fit_db"]
  out["gain_heldout_db"] = runs["gain_heldout_db"]
  return out


# ----------------------------------------------------------------------------------------------
# The figure (pillow only: no plotting dependency).


def _upscale(img: np.ndarray, f: int) -> np.ndarray:
  a = np.round(np.clip(np.asarray(img, np.float32), 0, 1) * 255).astype(np.uint8)
  return np.repeat(np.repeat(a, f, 0), f, 1)


def _bar_chart(values: dict, width: int, height: int):
  """Grouped bars: {metric: {"plain": [per-seed], "feedback": [per-seed]}} -> PIL image (mean bar + seed dots)."""
  from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel

  im = Image.new("RGB", (width, height), "white")
  d = ImageDraw.Draw(im)
  all_vals = [v for m in values.values() for run in m.values() for v in run]
  top = max(all_vals) * 1.35  # headroom for the legend
  left, bottom, plot_h = 34, height - 28, height - 48
  d.line([(left, bottom), (width - 6, bottom)], fill="black")
  d.line([(left, bottom), (left, bottom - plot_h)], fill="black")
  for tick in range(0, int(top) + 1, 5 if top < 60 else 10):
    y = bottom - tick / top * plot_h
    d.line([(left - 3, y), (left, y)], fill="black")
    d.text((2, y - 6), f"{tick}", fill="black")
  d.text((left + 4, 2), "PSNR (dB), mean over seeds; dots = seeds", fill="black")
  group_w = (width - left - 10) / len(values)
  colors = {"plain": (150, 150, 150), "feedback": (40, 110, 200)}
  for gi, (metric, runs) in enumerate(values.items()):
    x0 = left + 8 + gi * group_w
    bar_w = (group_w - 24) / 2
    for ri, (run, vals) in enumerate(runs.items()):
      xa = x0 + ri * (bar_w + 4)
      mean = float(np.mean(vals))
      d.rectangle([xa, bottom - mean / top * plot_h, xa + bar_w, bottom], fill=colors[run])
      d.text((xa + 2, bottom - mean / top * plot_h - 12), f"{mean:.1f}", fill="black")
      for v in vals:
        y = bottom - v / top * plot_h
        d.ellipse([xa + bar_w / 2 - 2, y - 2, xa + bar_w / 2 + 2, y + 2], fill="black")
    d.text((x0, bottom + 4), metric, fill="black")
  d.rectangle([width - 150, 18, width - 140, 28], fill=colors["plain"])
  d.text((width - 136, 17), "plain DDIM", fill="black")
  d.rectangle([width - 150, 32, width - 140, 42], fill=colors["feedback"])
  d.text((width - 136, 31), "3D feedback", fill="black")
  return im


def ablation_figure(all_runs: list[dict], path, scale: int = 3) -> np.ndarray:
  """The README figure: views of the first seed (rows: subjects' ground truth, template, plain, its 3DGS fit,
  feedback, its 3DGS fit) above a bar chart of fit / held-out PSNR over all seeds. Written atomically.

  Returns the (H, W, 3) uint8 image.
  """
  from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel
  from splatshot_jax.io import images as image_io  # pylint: disable=import-outside-toplevel
  from splatshot_jax.render import render_views  # pylint: disable=import-outside-toplevel

  runs = all_runs[0]
  s = runs["setup"]
  rows = [(f"subject {k}", s.images[k]) for k in range(s.images.shape[0])]
  rows.append(("template", s.template.images))
  for name, label in (("plain", "plain DDIM"), ("feedback", "3D feedback")):
    r = runs[name]
    rows.append((f"{label}: views", r["result"].final_images))
    fit_renders = np.asarray(render_views(r["fitted"], s.cameras).rgb)
    rows.append((f"{label}: 3DGS fit ({r['fit_psnr']:.1f} dB)", fit_renders))
  num_views, hh, ww = rows[0][1].shape[:3]
  cell_w, cell_h, label_w, pad = ww * scale, hh * scale, 190, 2
  width = label_w + num_views * (cell_w + pad)
  grid_h = len(rows) * (cell_h + pad)
  chart_h = 220
  canvas = Image.new("RGB", (max(width, 520), grid_h + chart_h + 8), "white")
  draw = ImageDraw.Draw(canvas)
  for ri, (label, imgs) in enumerate(rows):
    y = ri * (cell_h + pad)
    draw.text((4, y + cell_h // 2 - 6), label, fill="black")
    for v in range(num_views):
      canvas.paste(Image.fromarray(_upscale(imgs[v], scale)), (label_w + v * (cell_w + pad), y))
  values = {
      "fit PSNR (views vs one 3DGS)": {n: [r[n]["fit_psnr"] for r in all_runs] for n in ("plain", "feedback")},
      "held-out PSNR (vs true subject)": {n: [r[n]["heldout_psnr"] for r in all_runs]
                                          for n in ("plain", "feedback")},
  }
  canvas.paste(_bar_chart(values, canvas.width, chart_h), (0, grid_h + 8))
  out = np.asarray(canvas)
  image_io.save_image(path, out)
  return out
