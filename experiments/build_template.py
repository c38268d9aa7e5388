"""Build a base template from a calibrated multi-view set (or the synthetic head).

  python -m experiments.run --config=configs/build_template.py --config.data=PATH

Writes to config.out_dir: the template folder (`template/`, see splatshot_jax.templates), a preview grid
(`preview.png`: renders | heatmaps | parsing), `metrics.json` (held-out PSNR/SSIM, landmark
reprojection error, held-out parsing agreement where the set has parsing maps, timings) and the
resolved `config.json`. The fitted Gaussians are saved as `fit.ply` as soon as the fit ends (when a
later stage fails they are kept in OUT.failed/: see io.atomic.run_folder);
`--config.gaussians=OUT/fit.ply` rebuilds the controls from them without refitting. Every input is
checked first (`preflight.check_build_template`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from configs import build_template as build_template_config
from splatshot_jax import templates
from splatshot_jax.jobs import preflight
from splatshot_jax.face import controls
from splatshot_jax.io import atomic, images as image_io, ply


def template_config(section) -> templates.TemplateConfig:
  """TemplateConfig from the config's `template` section."""
  return templates.TemplateConfig(
      background=tuple(section.background), drop_jaw=section.drop_jaw, detector=section.detector,
      min_face_px=section.min_face_px, lift_iters=section.lift_iters, lift_lr=section.lift_lr,
      lift_views_per_iter=section.lift_views_per_iter, render_chunk=section.render_chunk,
      seed=section.seed)


def _background(config, scene_images: np.ndarray | None) -> tuple[float, float, float]:
  """config.background, or (auto, when empty) black or white from the images' top corners (above a
  head there is only background; shoulders may touch the bottom edge)."""
  if len(config.background):
    return tuple(float(c) for c in config.background)
  corners = np.concatenate([scene_images[:, :4, :4], scene_images[:, :4, -4:]], 1).reshape(-1, 3)
  return (1.0, 1.0, 1.0) if np.median(corners) > 0.5 else (0.0, 0.0, 0.0)


def run(config) -> dict:
  preflight.require(config, reference=build_template_config.get_config())
  with atomic.run_folder(config.out_dir, job="build_template") as out_dir:
    return _run(config, out_dir)


def _run(config, out_dir: Path) -> dict:
  tcfg = template_config(config.template)
  t_start = time.time()
  results: dict = {}
  if not config.data:
    name = config.name or "synthetic-head"
    t = templates.synthetic_template(num_gaussians=config.synthetic.num_gaussians,
                                     size=config.synthetic.size, rig=config.rig if config.rig != "auto" else
                                     "paper48", cfg=tcfg, name=name, seed=config.seed)
    results["source"] = t.info.source
  else:
    name = config.name or Path(config.data).name
    scene = templates.load_scene(config.data, scale=config.scale, holdout=config.holdout,
                                 background=tuple(config.background) or (1.0, 1.0, 1.0),
                                 hull_points=config.init.hull_points, seed=config.seed)
    background = _background(config, scene.train.images)
    print(f"{len(scene.train)} train / {len(scene.test_index)} held-out views at "
          f"{scene.train.cameras.width}x{scene.train.cameras.height}, background {background}; "
          f"init: {len(scene.points)} points from {scene.source}")
    if config.gaussians:
      # A fit saved by an earlier run (fit.ply): rebuild the controls without refitting.
      g = ply.read_gaussians(config.gaussians)
      results["fit"] = {"from": str(config.gaussians), "num_gaussians": int(g.num)}
    else:
      with tqdm(total=config.fit.num_iters, desc="fit", unit="it") as bar:
        def progress(n, stats):
          bar.update(n)
          bar.set_postfix(num=stats["num"], loss=f"{stats['loss']:.4f}")
        g, results["fit"] = templates.fit_scene(scene.train, scene.points, scene.colors, fit=config.fit,
                                                init=config.init, background=background, seed=config.seed,
                                                progress=progress)
      ply.write_gaussians(out_dir / "fit.ply", g)
    results["source"] = scene.source
    results["train"], _ = templates.evaluate_views(g, scene.train, background)
    scalars = {"train_psnr": results["train"]["psnr"]}
    if scene.test is not None:
      results["test"], _ = templates.evaluate_views(g, scene.test, background)
      scalars.update(heldout_psnr=results["test"]["psnr"], heldout_ssim=results["test"]["ssim"])
    print(f"fit: {results['fit']}, train PSNR {results['train']['psnr']:.2f}" +
          (f", held-out PSNR {results['test']['psnr']:.2f}" if scene.test is not None else ""))

    parsing = scene.data.controls.get("parsing_control") if scene.data is not None else None
    labels = None
    if parsing is not None:
      labels = np.stack([controls.colors_to_labels(parsing[i]) for i in scene.train_index])
    rig, real = templates.make_rig(scene.all_cameras, config.rig)
    t0 = time.time()
    t, lm3d = templates.build_template(g, scene.train, rig, real, name=name, parsing_labels=labels,
                                       cfg=tcfg, source=str(config.data), metrics=scalars)
    results["controls_seconds"] = round(time.time() - t0, 1)
    results["landmarks"] = {
        "views_used": int(lm3d.views_used.sum()), "num_views": len(real), "points_valid": int(lm3d.valid.sum()),
        "median_reproj_px": lm3d.median_reproj_error(),
        "median_reproj_px_per_view": [None if not np.isfinite(e) else round(float(e), 3)
                                      for e in np.nanmedian(np.where(lm3d.valid[None], lm3d.reproj_error_px,
                                                                     np.nan), axis=1)]}
    if parsing is not None and scene.test_index:
      # The held-out views' own parsing maps against the lifted labels rendered there. The official
      # maps swap l_/r_ brows and eyes between views, so also report agreement with sides merged.
      pred = t.labels
      pairs = [(pred[real[i]], templates.resize_labels(controls.colors_to_labels(parsing[i]),
                                                       (rig.width, rig.height))) for i in scene.test_index]
      merge = np.arange(templates.NUM_CLASSES)
      for a, b in (("r_brow", "l_brow"), ("r_eye", "l_eye"), ("r_ear", "l_ear")):
        merge[controls.CLASS[a]] = controls.CLASS[b]
      for key, f in (("heldout_parsing", lambda x: x), ("heldout_parsing_sides_merged", lambda x: merge[x])):
        agree = [controls.parsing_agreement(f(p), f(r)) for p, r in pairs]
        results[key] = {"pixel_acc": float(np.mean([a["pixel_acc"] for a in agree])),
                        "miou": float(np.mean([a["miou"] for a in agree]))}
  results.update(name=name, num_views=len(t), size=[t.cameras.width, t.cameras.height],
                 valid_views=int(np.asarray(t.valid).sum()), frontal_view=t.info.frontal_view,
                 parsing_source=t.info.parsing_source, approximate_classes=list(t.info.approximate_classes),
                 total_seconds=round(time.time() - t_start, 1))
  templates.save_template(out_dir / "template", t)
  step = max(1, len(t) // config.preview_views)
  image_io.save_image(out_dir / "preview.png", templates.preview_grid(t, range(0, len(t), step)))
  with atomic.atomic_path(out_dir / "metrics.json") as tmp:
    tmp.write_text(json.dumps(results, indent=2))
  with atomic.atomic_path(out_dir / "config.json") as tmp:
    tmp.write_text(config.to_json_best_effort(indent=2))
  print(json.dumps({k: v for k, v in results.items() if k not in ("landmarks",)}, indent=1))
  print(f"wrote {Path(config.out_dir) / 'template'}")
  return results


if __name__ == "__main__":
  from experiments import run as _run
  _run.launch("configs/build_template.py")
