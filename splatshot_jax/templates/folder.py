"""Template folders: the `Template` pytree, its on-disk layout (save / load), its frontal view and a preview grid.

On disk a template is a folder that `cameras.load_splatshot_views` also reads (the official layout):

  gaussians.ply       3DGS PLY (io.ply)
  manifest.json       name, num_views, size, source, real views, frontal view, landmarks3d,
                      parsing source and approximate classes, fit metrics
  meta.json           num_views, valid_views, padded_width, padded_height
  view_NNN.npz        padded_image (H, W render padded centred to multiples of 16 by reflection,
                      uint8), heatmap_control, parsing_control (H, W, 3) uint8, viewmat, K, valid

The official SplatShot precomputed templates (meta.json, view_NNN.npz and point_cloud.ply, no
manifest) load as they are (`load_template`), with the control maps they carry.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from splatshot_jax import cameras as cam_lib
from splatshot_jax import datasets, errors
from splatshot_jax.cameras import Camera
from splatshot_jax.face import controls
from splatshot_jax.gaussians import Gaussians
from splatshot_jax.io import images as image_io
from splatshot_jax.io import ply


FORMAT_VERSION = 1
NUM_CLASSES = len(controls.CLASS_NAMES)  # 19 CelebAMask-HQ classes
BACKGROUND = controls.CLASS["background"]
REQUIRED_FILES = ("gaussians.ply", "manifest.json", "meta.json")
OFFICIAL_PLY = "point_cloud.ply"  # the official templates' 3DGS, beside their meta.json and view_NNN.npz
PAD_MULTIPLE = 16  # SplatShot pads renders to multiples of 16 (the VAE's 8 x the UNet's 2)
# Classes `approximate_parsing` derives from region heuristics (hairline, neck band) rather than from
# landmark polygons; see its docstring.
HEURISTIC_CLASSES = ("skin", "neck", "cloth", "hair")


class TemplateError(errors.UserError, ValueError):
  """A template folder is incomplete or malformed, or a template cannot be built from the inputs."""


@dataclasses.dataclass(frozen=True)
class TemplateInfo:
  """Static description of a template (hashable: it is pytree metadata of `Template`).

  Attributes:
    source: where the Gaussians came from (a data folder, "synthetic head", ...).
    real_views: rig views that are real cameras of the source set (the rest are interpolated).
    frontal_view: the rig view closest to facing the head (used for template choice).
    parsing_source: how the parsing labels were obtained.
    approximate_classes: class names whose labels come from heuristics, not from a parser or ground truth.
    background: (3,) RGB behind the renders.
    metrics: (name, value) scalar fit metrics (held-out PSNR, ...).
  """

  source: str = ""
  real_views: tuple[int, ...] = ()
  frontal_view: int = 0
  parsing_source: str = ""
  approximate_classes: tuple[str, ...] = ()
  background: tuple[float, float, float] = (0.0, 0.0, 0.0)
  metrics: tuple[tuple[str, float], ...] = ()


@struct.dataclass
class Template:
  """A base template.

  Attributes:
    gaussians: the template head (N Gaussians).
    cameras: Camera (V,), the rig.
    renders: (V, H, W, 3) float32 in [0, 1], renders of `gaussians` in the rig on `info.background`.
    heatmaps: (V, H, W, 3) uint8 landmark heatmaps (openpose ControlNet condition).
    parsing: (V, H, W, 3) uint8 parsing maps in the official palette (seg ControlNet condition).
    landmarks3d: (68, 3) float32 world-space dlib-order landmarks (NaN where untriangulated).
    valid: (V,) bool, views whose heatmap has landmarks (the official npz's `valid`).
    name: template name (static).
    info: TemplateInfo (static).
  """

  gaussians: Gaussians
  cameras: Camera
  renders: jax.Array
  heatmaps: jax.Array
  parsing: jax.Array
  landmarks3d: jax.Array
  valid: jax.Array
  name: str = struct.field(pytree_node=False, default="template")
  info: TemplateInfo = struct.field(pytree_node=False, default_factory=TemplateInfo)

  def __len__(self) -> int:
    return self.renders.shape[0]

  @property
  def images(self) -> jax.Array:
    """(V, H, W, 3) float32 renders: the img2img inputs (the name `sampler.run_splatshot` reads)."""
    return self.renders

  @property
  def labels(self) -> np.ndarray:
    """(V, H, W) int32 parsing class ids decoded from the palette maps."""
    return np.stack([controls.colors_to_labels(p) for p in np.asarray(self.parsing)])


# ----------------------------------------------------------------------------------------------
# Save / load.


def frontal_view(points3d: np.ndarray, cameras: Camera) -> int:
  """The view that looks most directly at the face (the official frontal view is 8 of the 333 set).

  The face's forward direction is the normal of the plane through both eye centres and the mouth,
  oriented towards the majority of cameras; without landmarks, the view nearest the rig's mean
  viewing direction.
  """
  lm = np.asarray(points3d, np.float64)
  c = np.asarray(cameras.center, np.float64)
  pts = [lm[36:42].mean(0), lm[42:48].mean(0), lm[48:68].mean(0)]
  if all(np.isfinite(p).all() for p in pts):
    centre = np.mean(pts, 0)
    fwd = np.cross(pts[1] - pts[0], pts[2] - 0.5 * (pts[0] + pts[1]))
  else:
    centre, _, _ = datasets.scene_frame(cameras)
    fwd = (c - centre).mean(0)
  d = c - centre
  d /= np.linalg.norm(d, axis=-1, keepdims=True)
  cos = d @ (fwd / np.linalg.norm(fwd))
  if (cos > 0).sum() < (cos < 0).sum():
    cos = -cos
  return int(np.argmax(cos))


def _manifest(t: Template) -> dict:
  lm = np.asarray(t.landmarks3d, np.float64)
  return {
      "format_version": FORMAT_VERSION,
      "name": t.name,
      "num_views": len(t),
      "size": [t.cameras.width, t.cameras.height],
      "source": t.info.source,
      "real_views": list(t.info.real_views),
      "frontal_view": t.info.frontal_view,
      "num_gaussians": int(t.gaussians.num),
      "sh_degree": int(t.gaussians.sh_degree),
      "background": list(t.info.background),
      "parsing_source": t.info.parsing_source,
      "approximate_classes": list(t.info.approximate_classes),
      "parsing_classes": list(controls.CLASS_NAMES),
      "landmarks3d": [[float(v) if np.isfinite(v) else None for v in p] for p in lm],
      "metrics": dict(t.info.metrics),
  }


def save_template(folder: str | os.PathLike, t: Template) -> Path:
  """Writes a template folder atomically (a temporary sibling folder, then renamed).

  An existing template at `folder` is replaced; any other non-empty folder there is an error (so a
  wrong path never deletes unrelated files).

  Args:
    folder: destination directory.
    t: the template.

  Returns:
    the folder.
  """
  folder = Path(folder)
  if folder.exists() and any(folder.iterdir()) and not (folder / "manifest.json").exists():
    raise TemplateError(f"{folder}: exists, is not empty and holds no manifest.json; refusing to replace "
                        "it with a template (choose an empty or new folder)")
  folder.parent.mkdir(parents=True, exist_ok=True)
  tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
  old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir()
  try:
    ply.write_gaussians(tmp / "gaussians.ply", t.gaussians)
    renders = image_io.to_uint8(np.asarray(t.renders))
    heat, pars = np.asarray(t.heatmaps, np.uint8), np.asarray(t.parsing, np.uint8)
    viewmat, K = np.asarray(t.cameras.viewmat, np.float32), np.asarray(t.cameras.K, np.float32)
    valid = np.asarray(t.valid, bool)
    padded_hw = None
    for v in range(len(t)):
      padded, _ = image_io.pad_to_multiple(renders[v], PAD_MULTIPLE, "symmetric")
      padded_hw = padded.shape[:2]
      np.savez_compressed(tmp / f"view_{v:03d}.npz", padded_image=padded, heatmap_control=heat[v],
                          parsing_control=pars[v], viewmat=viewmat[v], K=K[v], valid=np.bool_(valid[v]))
    meta = {"num_views": len(t), "valid_views": int(valid.sum()), "padded_width": int(padded_hw[1]),
            "padded_height": int(padded_hw[0]), "template": t.name}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    (tmp / "manifest.json").write_text(json.dumps(_manifest(t), indent=1))
    if folder.exists():
      os.replace(folder, old)
    os.replace(tmp, folder)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
  return folder


def _read_manifest(path: Path) -> dict:
  try:
    m = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise TemplateError(f"{path}: invalid JSON ({e})") from None
  checks = {"name": str, "num_views": int, "size": list, "landmarks3d": list}
  for key, typ in checks.items():
    if not isinstance(m.get(key), typ) or isinstance(m.get(key), bool):
      raise TemplateError(f"{path}: field '{key}' must be a {typ.__name__}, got {m.get(key)!r:.60}")
  if m.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
    raise TemplateError(f"{path}: format_version {m['format_version']} is newer than this code's "
                        f"{FORMAT_VERSION}")
  lm = m["landmarks3d"]
  if len(lm) != 68 or any(not isinstance(p, list) or len(p) != 3 for p in lm):
    raise TemplateError(f"{path}: field 'landmarks3d' must be 68 [x, y, z] triples (null for missing)")
  return m


def _view_list(indices) -> str:
  names = [f"view_{int(i):03d}.npz" for i in indices]
  return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def camera_problems(folder: Path, cameras: Camera) -> list[str]:
  """NaN/inf and inconsistent cameras of a view folder (each problem names the field and the views).

  Consistent means: viewmat is a rigid world-to-camera transform (orthonormal rotation with det +1,
  last row 0 0 0 1) and K a pinhole matrix with positive focal lengths and last row 0 0 1.
  """
  vm, K = np.asarray(cameras.viewmat, np.float64), np.asarray(cameras.K, np.float64)
  problems = []
  finite = np.ones(len(vm), bool)
  for name, a in (("viewmat", vm), ("K", K)):
    ok = np.isfinite(a).all(axis=(1, 2))
    finite &= ok
    if not ok.all():
      problems.append(f"{folder}: field '{name}' has NaN/inf values in {int((~ok).sum())} of {len(a)} views "
                      f"({_view_list(np.nonzero(~ok)[0])}); expected finite numbers")
  vm, K = np.where(finite[:, None, None], vm, np.eye(4)), np.where(finite[:, None, None], K, np.eye(3))
  R = vm[:, :3, :3]
  rigid = ((np.abs(R @ np.swapaxes(R, 1, 2) - np.eye(3)).max(axis=(1, 2)) < 1e-3)
           & (np.linalg.det(R) > 0) & (np.abs(vm[:, 3] - [0, 0, 0, 1]).max(-1) < 1e-6))
  if not rigid.all():
    problems.append(f"{folder}: field 'viewmat' is not a rigid world-to-camera transform (orthonormal "
                    f"rotation, last row 0 0 0 1) in {_view_list(np.nonzero(~rigid)[0])}")
  pinhole = (K[:, 0, 0] > 0) & (K[:, 1, 1] > 0) & (np.abs(K[:, 2] - [0, 0, 1]).max(-1) < 1e-6)
  if not pinhole.all():
    problems.append(f"{folder}: field 'K' is not a pinhole matrix (fx, fy > 0, last row 0 0 1) in "
                    f"{_view_list(np.nonzero(~pinhole)[0])}")
  return problems


def inspect_template(folder: str | os.PathLike) -> tuple[list[str], dict | None]:
  """Every problem of a template folder at once, and its parts when there are none.

  Two layouts are read: this project's (`save_template`: manifest.json + gaussians.ply) and the
  official SplatShot precomputed templates (meta.json, view_NNN.npz and the template's
  point_cloud.ply, no manifest). Everything is checked: required files, meta/manifest fields, each
  view's npz (fields, shapes), cameras (finite, consistent: `camera_problems`) and the PLY (readable,
  >= 1 Gaussian, finite values), and the manifest against the views.

  Returns:
    (problems, each naming the file; parts {"data": MultiviewData, "gaussians", "manifest" or None,
     "meta", "ply"} or None when there are problems).
  """
  folder = Path(folder)
  if not folder.is_dir():
    return [f"{folder}: not a directory (expected a template folder with {', '.join(REQUIRED_FILES)} and "
            f"view_NNN.npz, or an official SplatShot one with {OFFICIAL_PLY}, meta.json and view_NNN.npz)"], None
  problems: list[str] = []
  m = meta = None
  if (folder / "manifest.json").is_file():
    ply_path = folder / "gaussians.ply"
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    try:
      m = _read_manifest(folder / "manifest.json")
    except TemplateError as e:
      problems.append(str(e))
  else:  # the official layout
    ply_path = next((folder / n for n in ("gaussians.ply", OFFICIAL_PLY) if (folder / n).is_file()),
                    folder / OFFICIAL_PLY)
    missing = [] if ply_path.is_file() else [f"gaussians.ply (or the official {OFFICIAL_PLY})"]
    missing += [] if (folder / "meta.json").is_file() else ["meta.json", "manifest.json"]
  if (folder / "meta.json").is_file():
    try:
      meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError) as e:
      problems.append(f"{folder / 'meta.json'}: invalid JSON ({e})")
  num_views = m["num_views"] if m is not None else (meta or {}).get("num_views")
  if isinstance(num_views, int) and not isinstance(num_views, bool):
    missing += [f"view_{v:03d}.npz" for v in range(num_views) if not (folder / f"view_{v:03d}.npz").is_file()]
  if missing:
    problems.insert(0, f"{folder}: incomplete template, missing {', '.join(missing)}")
  data = g = None
  if not missing and meta is not None:
    try:
      data = cam_lib.load_splatshot_views(folder)
    except cam_lib.CameraFormatError as e:
      problems.append(str(e))
  if data is not None:
    problems += camera_problems(folder, data.cameras)
    for key, a in [("padded_image", data.images), *data.controls.items()]:
      a = np.asarray(a)
      if a.dtype.kind == "f" and not np.isfinite(a).all():
        bad = ~np.isfinite(a).reshape(len(a), -1).all(-1)
        problems.append(f"{folder}: field '{key}' has NaN/inf values in {_view_list(np.nonzero(bad)[0])}")
    if m is not None and (len(data) != m["num_views"] or [data.cameras.width, data.cameras.height] != m["size"]):
      problems.append(f"{folder}: manifest.json says {m['num_views']} views of size {m['size']}, "
                      f"the views hold {len(data)} of {[data.cameras.width, data.cameras.height]}")
  if ply_path.is_file():
    try:
      g = ply.read_gaussians(ply_path)
    except ply.PlyError as e:
      problems.append(str(e))
  if problems:
    return problems, None
  return problems, {"data": data, "gaussians": g, "manifest": m, "meta": meta, "ply": ply_path}


def load_template(folder: str | os.PathLike) -> Template:
  """Reads a template folder written by `save_template`, or an official SplatShot template folder.

  Renders come back quantised to 8 bits (they are stored as the official uint8 `padded_image`). An
  official folder carries no landmarks (landmarks3d all NaN; the frontal view is then the one nearest
  the rig's mean viewing direction) and its controls are its own precomputed maps.

  Raises:
    TemplateError: listing every problem `inspect_template` finds (missing files, malformed
      manifest / meta / views, NaN or inconsistent cameras, unreadable, empty or non-finite PLY).
  """
  folder = Path(folder)
  problems, parts = inspect_template(folder)
  if problems:
    raise TemplateError(problems[0] if len(problems) == 1 else
                        f"{folder}: {len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems))
  data, g, m = parts["data"], parts["gaussians"], parts["manifest"]
  if m is not None:
    lm = np.array([[np.nan if v is None else v for v in p] for p in m["landmarks3d"]], np.float32)
    name = m["name"]
    info = TemplateInfo(
        source=m.get("source", ""), real_views=tuple(m.get("real_views", ())),
        frontal_view=int(m.get("frontal_view", 0)), parsing_source=m.get("parsing_source", ""),
        approximate_classes=tuple(m.get("approximate_classes", ())),
        background=tuple(m.get("background", (0.0, 0.0, 0.0))),
        metrics=tuple((k, float(v)) for k, v in m.get("metrics", {}).items()
                      if isinstance(v, (int, float))))
  else:
    lm = np.full((68, 3), np.nan, np.float32)
    name = str(parts["meta"].get("template") or folder.name)
    info = TemplateInfo(source=f"{folder} (official SplatShot template layout, {parts['ply'].name})",
                        frontal_view=frontal_view(lm, data.cameras),
                        parsing_source="the folder's precomputed parsing_control maps")
  return Template(gaussians=g, cameras=data.cameras,
                  renders=jnp.asarray(data.images, jnp.float32) / 255.0,
                  heatmaps=jnp.asarray(data.controls["heatmap_control"]),
                  parsing=jnp.asarray(data.controls["parsing_control"]),
                  landmarks3d=jnp.asarray(lm), valid=jnp.asarray(data.valid), name=name, info=info)


def preview_grid(t: Template, views: Optional[Sequence[int]] = None) -> np.ndarray:
  """(H, W, 3) uint8 grid: renders, heatmaps and parsing maps in three rows, one column per view."""
  views = list(range(len(t))) if views is None else list(views)
  rows = [np.asarray(t.renders)[views], np.asarray(t.heatmaps)[views], np.asarray(t.parsing)[views]]
  tiles = [image_io.to_uint8(im) for row in rows for im in row]
  labels = [f"view {v}" + (" (real)" if v in t.info.real_views else "") for v in views] + [""] * 2 * len(views)
  return image_io.make_grid(tiles, ncols=len(views), labels=labels)
