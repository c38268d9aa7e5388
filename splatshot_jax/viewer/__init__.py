"""A self-contained WebGL2 viewer page for Gaussians: `write_viewer(path, gaussians, cameras)`.

The page (viewer/template.html + viewer/viewer.js, inlined at write time) opens from file:// with no
network and nothing installed. It draws what `splatshot_jax.render` draws: the same EWA projection,
0.3 px low-pass, opacity-aware radius, SH colour and 3DGS blending (viewer.js says how).

Embedded data, one little-endian blob in base64, planar arrays (sizes for N Gaussians, K SH coeffs):
  means       (N, 3) uint16, quantised in the bounding box [mean_lo, mean_hi] (step ≤ extent / 65535)
  log_scales  (N, 3) float16
  quats       (N, 4) float16, normalised (w, x, y, z)
  opacities   (N,)   float16, sigmoid(opacity_logits)
  sh          (N, K, 3) float16
so 2 * (3 + 3 + 4 + 1 + 3K) bytes per Gaussian (118 B at SH degree 3), times 4/3 for base64.
The metadata (JSON) holds the section offsets, the cameras (OpenCV world-to-camera viewmat and K,
as `cameras.Camera`), the orbit target and up direction, the background, and `alpha_max`: the rasterizer's α
clamp the Gaussians were fitted with (a run's config.refit.alpha_max: official 0.999), which the page draws with.
"""

from __future__ import annotations

import base64
import json
import os
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np

from splatshot_jax.cameras import Camera, orbit_rig
from splatshot_jax.gaussians import Gaussians
from splatshot_jax.io.atomic import atomic_path

FORMAT = "splatshot-viewer-1"
DEFAULT_ALPHA_MAX = 0.99  # render.composite.ALPHA_MAX (the viewer may not import the renderer)


def run_alpha_max(config) -> float:
  """The α clamp a run's avatar was made with: config["refit"]["alpha_max"] (a ConfigDict, a dict or a run
  folder's config.json path), DEFAULT_ALPHA_MAX when the config does not say."""
  if isinstance(config, (str, os.PathLike)):
    try:
      config = json.loads(Path(config).read_text())
    except (OSError, ValueError):
      return DEFAULT_ALPHA_MAX
  try:
    return float(config["refit"]["alpha_max"])
  except (KeyError, TypeError, ValueError):
    return DEFAULT_ALPHA_MAX
_SECTIONS = ("means", "log_scales", "quats", "opacities", "sh")


def encode_gaussians(g: Gaussians) -> tuple[dict, bytes]:
  """Gaussians -> (metadata dict, blob) in the viewer's compact layout (module docstring).

  Args:
    g: N ≥ 1 Gaussians with finite parameters; sh (N, K, 3), K = (d + 1)², d ≤ 3.
  Returns:
    meta: {"num_gaussians", "sh_degree", "mean_lo", "mean_hi", "sections": {name: [byte offset,
      number of uint16 values]}, "num_bytes"}.
    blob: bytes.
  Raises:
    ValueError: no Gaussians, SH degree above 3, or non-finite parameters (naming the field).
  """
  arrays = {k: np.asarray(getattr(g, k), np.float64)
            for k in ("means", "log_scales", "quats", "opacity_logits", "sh")}
  n = arrays["means"].shape[0]
  if n < 1:
    raise ValueError("viewer: no Gaussians to write")
  degree = g.sh_degree
  if degree > 3 or (degree + 1) ** 2 != arrays["sh"].shape[1]:
    raise ValueError(f"viewer: sh must hold (d + 1)^2 coefficients with d <= 3, got shape "
                     f"{arrays['sh'].shape}")
  for k, a in arrays.items():
    if not np.all(np.isfinite(a)):
      raise ValueError(f"viewer: Gaussians field '{k}' has {int(np.sum(~np.isfinite(a)))} "
                       f"non-finite values")
  means = arrays["means"]
  lo, hi = means.min(0), means.max(0)
  span = np.where(hi > lo, hi - lo, 1.0)
  quats = arrays["quats"] / np.linalg.norm(arrays["quats"], axis=-1, keepdims=True)
  with np.errstate(over="ignore"):  # logits beyond ±700 saturate to 0 / 1, which is right
    opac = 1.0 / (1.0 + np.exp(-arrays["opacity_logits"]))
  parts = {
      "means": np.round((means - lo) / span * 65535.0).astype("<u2"),
      "log_scales": arrays["log_scales"].astype("<f2"),
      "quats": quats.astype("<f2"),
      "opacities": opac.astype("<f2"),
      "sh": arrays["sh"].astype("<f2"),
  }
  sections, chunks, offset = {}, [], 0
  for k in _SECTIONS:
    b = parts[k].tobytes()
    sections[k] = [offset, parts[k].size]
    chunks.append(b)
    offset += len(b)
  meta = {"num_gaussians": int(n), "sh_degree": int(degree), "mean_lo": lo.tolist(),
          "mean_hi": (lo + span).tolist(), "sections": sections, "num_bytes": offset}
  return meta, b"".join(chunks)


def decode_gaussians(meta: dict, blob: bytes) -> Gaussians:
  """Inverse of `encode_gaussians` (numpy, float32), as viewer.js decodes it; for tests/tools."""
  n, k = meta["num_gaussians"], (meta["sh_degree"] + 1) ** 2
  get = lambda name, dt: np.frombuffer(blob, dt, meta["sections"][name][1], meta["sections"][name][0])
  lo, hi = np.asarray(meta["mean_lo"]), np.asarray(meta["mean_hi"])
  means = lo + get("means", "<u2").reshape(n, 3) / 65535.0 * (hi - lo)
  op = get("opacities", "<f2").astype(np.float64)
  f32 = lambda a: np.asarray(a, np.float32)
  with np.errstate(divide="ignore"):
    logits = np.log(op) - np.log1p(-op)
  return Gaussians(means=f32(means), log_scales=f32(get("log_scales", "<f2").reshape(n, 3)),
                   quats=f32(get("quats", "<f2").reshape(n, 4)), opacity_logits=f32(logits),
                   sh=f32(get("sh", "<f2").reshape(n, k, 3)))


def default_cameras(g: Gaussians, *, num: int = 8, width: int = 512, height: int = 512,
                    fov_deg: float = 30.0) -> Camera:
  """A ring of `num` cameras around the Gaussians, for a .ply that comes without cameras.

  Heads in this project face +z with +y up (cameras.orbit_rig), so camera 0 looks at the face.
  The ring's radius frames the 90th-percentile distance from the median mean with some margin.
  """
  means = np.asarray(g.means, np.float64)
  center = np.median(means, 0)
  extent = float(np.percentile(np.linalg.norm(means - center, axis=-1), 90)) or 1.0
  radius = 1.3 * extent / np.tan(0.5 * np.radians(fov_deg))
  yaws = np.arange(num) * 360.0 / num
  return orbit_rig(center, radius, yaws, [0.0], width=width, height=height, fov_deg=fov_deg)


def _scene_frame(g: Gaussians, cameras: Camera) -> tuple[np.ndarray, np.ndarray]:
  """Orbit target and up: where the rig looks (datasets.scene_frame), or the Gaussians' median."""
  from splatshot_jax.datasets import scene_frame  # pylint: disable=import-outside-toplevel
  R = np.asarray(cameras.viewmat, np.float64)[:, :3, :3]
  up = -R[:, 1, :].mean(0)
  up = up / np.linalg.norm(up)
  if len(cameras) >= 2 and np.linalg.matrix_rank(R[:, 2, :], tol=1e-3) >= 2:
    target, up, _ = scene_frame(cameras)
  else:  # one camera (or parallel axes): the optical axes do not pin down a point
    target = np.median(np.asarray(g.means, np.float64), 0)
  return np.asarray(target), np.asarray(up)


def _asset(name: str) -> str:
  return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def _script_safe(text: str) -> str:
  """Text that cannot end the <script> element it is embedded in."""
  return text.replace("</", "<\\/")


def viewer_html(g: Gaussians, cameras: Camera | None = None, *, names: Sequence[str] | None = None,
                name: str = "splats", background=(1.0, 1.0, 1.0), initial_camera: int = 0,
                alpha_max: float = DEFAULT_ALPHA_MAX) -> str:
  """The viewer page as a string (see `write_viewer`)."""
  if cameras is None:
    cameras = default_cameras(g)
  viewmat = np.asarray(cameras.viewmat, np.float64).reshape(-1, 4, 4)
  K = np.asarray(cameras.K, np.float64).reshape(-1, 3, 3)
  if viewmat.shape[0] != K.shape[0] or not (np.all(np.isfinite(viewmat)) and np.all(np.isfinite(K))):
    raise ValueError(f"viewer: cameras need finite viewmat (V, 4, 4) and K (V, 3, 3), got "
                     f"{viewmat.shape} and {K.shape}")
  cameras = Camera(viewmat, K, cameras.width, cameras.height)
  names = list(names) if names is not None else [f"view_{i:03d}" for i in range(len(viewmat))]
  if len(names) != len(viewmat):
    raise ValueError(f"viewer: {len(names)} camera names for {len(viewmat)} cameras")
  if not 0 <= initial_camera < len(viewmat):
    raise ValueError(f"viewer: initial_camera {initial_camera} outside 0..{len(viewmat) - 1}")
  meta, blob = encode_gaussians(g)
  target, up = _scene_frame(g, cameras)
  meta.update(
      format=FORMAT, name=name, width=int(cameras.width), height=int(cameras.height),
      background=[float(c) for c in background], initial_camera=int(initial_camera), alpha_max=float(alpha_max),
      target=target.tolist(), up=up.tolist(),
      cameras=[{"name": str(nm), "viewmat": vm.reshape(-1).tolist(), "K": k.reshape(-1).tolist()}
               for nm, vm, k in zip(names, viewmat, K)])
  page = _asset("template.html")
  # Replace the data placeholder last: base64 contains no "__", the JSON/JS could.
  for key, value in (("__TITLE__", _html_escape(name)), ("__VIEWER_JS__", _script_safe(_asset("viewer.js"))),
                     ("__META__", _script_safe(json.dumps(meta)))):
    page = page.replace(key, value, 1)
  return page.replace("__DATA__", base64.b64encode(blob).decode("ascii"), 1)


def _html_escape(s: str) -> str:
  return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_viewer(path: str | os.PathLike, gaussians: Gaussians, cameras: Camera | None = None, *,
                 names: Sequence[str] | None = None, name: str | None = None,
                 background=(1.0, 1.0, 1.0), initial_camera: int = 0,
                 alpha_max: float = DEFAULT_ALPHA_MAX) -> Path:
  """Writes one self-contained viewer.html (atomically) for `gaussians`.

  Args:
    path: destination .html.
    gaussians: N Gaussians (means (N, 3), log_scales (N, 3), quats (N, 4) wxyz, opacity_logits (N,),
      sh (N, K, 3) with SH degree ≤ 3).
    cameras: V cameras (Camera batch, OpenCV world-to-camera) to jump to, e.g. the template's 48
      views; None gives `default_cameras` (a ring of 8 around the Gaussians).
    names: V camera names shown on hover (default view_NNN).
    name: title of the page (default: the file's parent folder name).
    background: (3,) RGB in [0, 1] the page opens with (toggle on the page, or #bg=black).
    initial_camera: camera shown first (overridden by #camera=i in the URL).
    alpha_max: the rasterizer's α clamp the Gaussians were made with (`run_alpha_max(config)`); the page
      draws with it.
  Returns:
    The path written.
  """
  path = Path(path)
  page = viewer_html(gaussians, cameras, names=names, name=name or path.resolve().parent.name,
                     background=background, initial_camera=initial_camera, alpha_max=alpha_max)
  with atomic_path(path) as tmp:
    Path(tmp).write_text(page, encoding="utf-8")
  return path


__all__ = ["FORMAT", "DEFAULT_ALPHA_MAX", "run_alpha_max", "encode_gaussians", "decode_gaussians", "default_cameras", "viewer_html",
           "write_viewer"]
