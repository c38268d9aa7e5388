"""Base templates: a 3DGS head, its camera rig, per-view renders and the two ControlNet maps per view.

A template is what SplatShot starts from (the official code ships two, NeRSemble subjects 333 and 288).
Here any calibrated multi-view head becomes one:

  scene = load_scene(path, scale=0.5, holdout=(8,), background=(1, 1, 1))
  g, fit_info = fit_scene(scene.train, scene.points, scene.colors, fit=..., init=..., background=...)
  rig, real = make_rig(scene.all_cameras, "paper48")          # 16 real + 32 interpolated cameras
  t = build_template(g, scene.train, rig, real, name="nersemble-128", parsing_labels=None)
  save_template("templates/nersemble-128", t)

Controls are consistent across views by construction: the 68 landmarks are detected on the renders
of the real cameras, triangulated once (face.landmarks3d) and projected into every rig view for the
heatmap; per-view parsing labels (the set's own maps, or `face.controls.approximate_parsing`) are
lifted onto the Gaussians as per-Gaussian class logits (rendered as extra channels, fitted by softmax
cross-entropy with the Gaussians frozen), so any new view gets its parsing map by rendering them.

The package: `folder` (the Template pytree, save / load, checks), `build` (scene, fit, rig,
assembly, the synthetic head), `control_maps` (landmarks, heatmaps, parsing lifting), `choice`.
On disk a template is a folder in the official layout (gaussians.ply, manifest.json, meta.json,
view_NNN.npz): `folder`'s docstring lists the fields.
"""

from __future__ import annotations

# Re-exports: `from splatshot_jax.templates import X` and `templates.X` work as before the split.
from splatshot_jax.templates.folder import (BACKGROUND, FORMAT_VERSION, HEURISTIC_CLASSES, NUM_CLASSES,
                                            OFFICIAL_PLY, PAD_MULTIPLE, REQUIRED_FILES, Template, TemplateError,
                                            TemplateInfo, camera_problems, inspect_template, load_template,
                                            preview_grid, save_template)
from splatshot_jax.templates.control_maps import (approximate_view_labels, frontal_view, labels_from_render,
                                                  landmark_heatmaps, lift_labels, render_chunked, render_labels,
                                                  resize_labels, triangulate_template_landmarks)
from splatshot_jax.templates.build import (Scene, TemplateConfig, build_template, evaluate_views, fit_scene,
                                           interpolated_rig, load_scene, make_rig, synthetic_class_labels,
                                           synthetic_landmarks3d, synthetic_template, template_from_gaussians)
from splatshot_jax.templates.choice import Embedder, choose_template, clip_embedder, template_features
