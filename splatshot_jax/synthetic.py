"""A synthetic head the project generates itself: ground-truth Gaussians plus an orbit rig.

No data needed, so fitting, guidance and benchmarks can be tested end to end on CPU: render the
ground truth into the rig, fit from `points`, compare. The head is an ellipsoid of surfels
(flat Gaussians tangent to the surface) with a hair cap, two eyes (white sclera, dark iris), a
nose bump, lips and a neck, in NeRSemble's frame: metres, +y up, the face looking along +z.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from splatshot_jax import cameras as cam_lib
from splatshot_jax.cameras import Camera
from splatshot_jax.gaussians import Gaussians, num_sh_coeffs, rgb_to_sh_dc

# Part labels of the ground truth (a toy face parsing).
PARTS = ("skin", "hair", "sclera", "iris", "nose", "lips", "neck")
PART_COLORS = np.array([
    [0.87, 0.68, 0.56],  # skin
    [0.24, 0.14, 0.07],  # hair
    [0.95, 0.95, 0.93],  # sclera
    [0.12, 0.18, 0.35],  # iris
    [0.90, 0.64, 0.54],  # nose (a little redder than skin, so its outline is visible)
    [0.72, 0.27, 0.30],  # lips
    [0.80, 0.62, 0.50],  # neck
], np.float32)

HEAD_RADII = np.array([0.078, 0.105, 0.092])  # x (ear to ear), y (chin to crown), z (nose to back)


@dataclasses.dataclass(frozen=True)
class SyntheticScene:
  """Ground truth and views of the synthetic head.

  Attributes:
    gaussians: ground-truth Gaussians (N), float32.
    labels: (N,) int32 index into PARTS.
    cameras: Camera (V,), OpenCV, looking at the head centre.
    points: (M, 3) float32 noisy surface samples for `init_from_points` (like points3d.ply).
    colors: (M, 3) float32 in [0, 1], the colours of those samples (zeros if colourless).
    images: (V, H, W, 3) float32 renders of `gaussians`, or None until `render_scene`.
  """

  gaussians: Gaussians
  labels: np.ndarray
  cameras: Camera
  points: np.ndarray
  colors: np.ndarray
  images: np.ndarray | None = None


def _fibonacci_sphere(n: int) -> np.ndarray:
  """(n, 3) nearly uniform unit vectors (golden-angle spiral), so surfels tile evenly."""
  i = np.arange(n) + 0.5
  y = 1.0 - 2.0 * i / n
  r = np.sqrt(1.0 - y * y)
  phi = np.pi * (3.0 - np.sqrt(5.0)) * i
  return np.stack([r * np.cos(phi), y, r * np.sin(phi)], -1)


def _frames(normals: np.ndarray) -> np.ndarray:
  """(n, 3) unit normals -> (n, 3, 3) rotations whose third column is the normal."""
  helper = np.where(np.abs(normals[:, 1:2]) < 0.9, [[0.0, 1.0, 0.0]], [[1.0, 0.0, 0.0]])
  t1 = np.cross(helper, normals)
  t1 /= np.linalg.norm(t1, axis=1, keepdims=True)
  t2 = np.cross(normals, t1)
  return np.stack([t1, t2, normals], -1)


def head_gaussians(num_gaussians: int = 3000, *, sh_degree: int = 0, seed: int = 0
                   ) -> tuple[Gaussians, np.ndarray]:
  """The ground-truth head as surfels.

  Args:
    num_gaussians: total N (80% head skin and hair, 8% eyes and lips, 12% neck).
    sh_degree: SH degree of the result; colours are view-independent (higher bands zero).
    seed: jitter of the surfel positions.

  Returns:
    gaussians: N Gaussians, float32.
    labels: (N,) int32 part index into PARTS.
  """
  rs = np.random.default_rng(seed)
  n_neck = num_gaussians * 12 // 100
  n_feat = num_gaussians * 8 // 100  # eyes and lips get their own, finer surfels
  n_head = num_gaussians - n_neck - n_feat

  # Head: ellipsoid surface, directions jittered a little so the layout is not a perfect spiral.
  d = _fibonacci_sphere(n_head) + rs.normal(scale=0.3 / np.sqrt(n_head), size=(n_head, 3))
  d /= np.linalg.norm(d, axis=1, keepdims=True)
  x, y, z = d.T
  label = np.zeros(n_head, np.int32)
  # Hair: the crown and the back of the head.
  label[(y > 0.45 - 0.35 * np.clip(-z, 0, 1)) | ((z < -0.25) & (y > -0.35))] = PARTS.index("hair")

  # Eyes and lips: discs in direction space on the front, drawn with extra small surfels that
  # sit just outside the skin so they win the depth order.
  feats = [(-0.36, 0.17, 0.15, 0.15, "eye"), (0.36, 0.17, 0.15, 0.15, "eye"),
           (0.0, -0.52, 0.26, 0.08, "lips")]
  per = np.array([0.35, 0.35, 0.30]) * n_feat
  counts = np.floor(per).astype(int)
  counts[-1] = n_feat - counts[:-1].sum()
  fd, flabel = [], []
  for (cx, cy, ax, ay, kind), cnt in zip(feats, counts):
    r = np.sqrt((np.arange(cnt) + 0.5) / cnt)  # sunflower disc: even spacing inside the ellipse
    phi = np.pi * (3.0 - np.sqrt(5.0)) * np.arange(cnt)
    fx, fy = cx + ax * r * np.cos(phi), cy + ay * r * np.sin(phi)
    fd.append(np.stack([fx, fy, np.sqrt(np.clip(1 - fx ** 2 - fy ** 2, 0, 1))], -1))
    if kind == "eye":
      flabel.append(np.where(r < 0.5, PARTS.index("iris"), PARTS.index("sclera")))
    else:
      flabel.append(np.full(cnt, PARTS.index("lips")))
  fd = np.concatenate(fd)
  d = np.concatenate([d, fd])
  label = np.concatenate([label, np.concatenate(flabel).astype(np.int32)])
  x, y, z = d.T
  # Nose: a Gaussian bump on the face, pushed out along +z.
  bump = 0.02 * np.exp(-((x / 0.11) ** 2 + ((y + 0.12) / 0.17) ** 2) / 2.0) * (z > 0)
  pos = d * HEAD_RADII
  pos[:, 2] += bump
  label[(bump > 0.012) & (label == 0)] = PARTS.index("nose")
  # Outward normals of the ellipsoid (the nose bump only tilts them slightly; ignored).
  normals = d / HEAD_RADII ** 2
  normals /= np.linalg.norm(normals, axis=1, keepdims=True)
  pos[n_head:] += 0.0015 * normals[n_head:]

  # Neck: an open cylinder from under the chin downwards, on a jittered regular grid.
  rows = max(int(np.sqrt(n_neck / 4)), 1)
  theta = 2 * np.pi * (np.arange(n_neck) * 0.6180339887 % 1.0)
  h = -0.07 - 0.13 * (np.arange(n_neck) + 0.5) / n_neck
  theta += rs.normal(scale=0.3 / rows, size=n_neck)
  neck_pos = np.stack([0.05 * np.cos(theta), h, 0.05 * np.sin(theta) - 0.01], -1)
  neck_normals = np.stack([np.cos(theta), np.zeros(n_neck), np.sin(theta)], -1)

  pos = np.concatenate([pos, neck_pos])
  normals = np.concatenate([normals, neck_normals])
  labels = np.concatenate([label, np.full(n_neck, PARTS.index("neck"), np.int32)])
  # Surfels: tangent std ~ 0.7 x the spacing so neighbours overlap into a closed surface.
  area = 4 * np.pi * np.mean(HEAD_RADII) ** 2
  spacing = np.sqrt(area / n_head)
  scales = np.tile([0.7 * spacing, 0.7 * spacing, 0.15 * spacing], (len(pos), 1))
  # Feature surfels: spaced by their own density (area of the three discs on the ellipsoid).
  feat_area = np.pi * (2 * 0.15 * 0.15 + 0.26 * 0.08) * HEAD_RADII[0] * HEAD_RADII[1]
  fs = np.sqrt(feat_area / max(n_feat, 1))
  scales[n_head:n_head + n_feat] = [0.7 * fs, 0.7 * fs, 0.15 * fs]
  # The neck: circumference x height over its count.
  ns = np.sqrt(2 * np.pi * 0.05 * 0.13 / max(n_neck, 1))
  scales[n_head + n_feat:] = [0.8 * ns, 0.8 * ns, 0.15 * ns]
  quats = np.asarray(cam_lib.rotmat_to_quat(jnp.asarray(_frames(normals), jnp.float32)))
  rgb = PART_COLORS[labels] * rs.uniform(0.95, 1.05, (len(pos), 1))  # mild albedo noise
  sh = np.zeros((len(pos), num_sh_coeffs(sh_degree), 3), np.float32)
  sh[:, 0] = np.asarray(rgb_to_sh_dc(jnp.asarray(np.clip(rgb, 0, 1), jnp.float32)))
  opacity = 0.95
  g = Gaussians(
      means=jnp.asarray(pos, jnp.float32),
      log_scales=jnp.asarray(np.log(scales), jnp.float32),
      quats=jnp.asarray(quats, jnp.float32),
      opacity_logits=jnp.full((len(pos),), np.log(opacity / (1 - opacity)), jnp.float32),
      sh=jnp.asarray(sh),
  )
  return g, labels


def head_rig(num_views: int = 16, *, width: int = 128, height: int = 128, radius: float = 0.6,
             fov_deg: float = 30.0, yaw_range: float = 70.0, pitches=(-12.0, 12.0)) -> Camera:
  """Two rows of cameras in front of the head, like NeRSemble's 16-camera rig.

  Args:
    num_views: V, a multiple of len(pitches); yaws are evenly spaced in [-yaw_range, yaw_range].
    width, height: image size in pixels.
    radius: distance to the head centre (metres).
    fov_deg: vertical field of view; 30 degrees at 0.6 m frames the head with some margin.
    pitches: camera elevations in degrees, one row each.

  Returns:
    Camera (V,), pitch-major.
  """
  if num_views % len(pitches):
    raise ValueError(f"head_rig: num_views={num_views} is not a multiple of {len(pitches)} rows")
  yaws = np.linspace(-yaw_range, yaw_range, num_views // len(pitches))
  return cam_lib.orbit_rig(np.zeros(3), radius, yaws, pitches, width=width, height=height,
                           fov_deg=fov_deg)


def make_head_scene(num_gaussians: int = 3000, num_views: int = 16, *, width: int = 128,
                    height: int = 128, sh_degree: int = 0, num_points: int | None = None,
                    point_noise: float = 0.002, colored_points: bool = False, seed: int = 0,
                    render_images: bool = False, background=(1.0, 1.0, 1.0)) -> SyntheticScene:
  """The synthetic head, its camera rig and an initialisation point cloud.

  Args:
    num_gaussians: ground-truth N.
    num_views: V cameras (`head_rig`).
    width, height: image size.
    sh_degree: SH degree of the ground truth.
    num_points: M init points (default N // 2), subsampled from the surface with Gaussian noise
      of std `point_noise` metres, like a coarse reconstruction.
    colored_points: give the points their true colours (else zeros, like points3d.ply).
    seed: randomness of the surfels and the points.
    render_images: also render the V images (needs splatshot_jax.render).
    background: (3,) RGB behind the head for the renders.

  Returns:
    SyntheticScene.
  """
  g, labels = head_gaussians(num_gaussians, sh_degree=sh_degree, seed=seed)
  cams = head_rig(num_views, width=width, height=height)
  rs = np.random.default_rng(seed + 1)
  m = num_points if num_points is not None else num_gaussians // 2
  idx = rs.choice(g.num, size=min(m, g.num), replace=False)
  pts = np.asarray(g.means)[idx] + rs.normal(scale=point_noise, size=(len(idx), 3))
  cols = PART_COLORS[labels[idx]] if colored_points else np.zeros((len(idx), 3), np.float32)
  scene = SyntheticScene(g, labels, cams, pts.astype(np.float32), cols.astype(np.float32))
  return render_scene(scene, background) if render_images else scene


def render_scene(scene: SyntheticScene, background=(1.0, 1.0, 1.0), **render_kwargs
                 ) -> SyntheticScene:
  """Renders the ground truth into every camera (raises if the rasterizer's budgets overflow).

  Returns:
    the scene with images (V, H, W, 3) float32.
  """
  from splatshot_jax.render import check_overflow, render_views  # pylint: disable=import-outside-toplevel
  out = render_views(scene.gaussians, scene.cameras, background=jnp.asarray(background, jnp.float32),
                     **render_kwargs)
  check_overflow(out)
  return dataclasses.replace(scene, images=np.asarray(out.rgb, np.float32))
