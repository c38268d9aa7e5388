"""The evaluation's geometry in closed form: which yaws enter the headline identity mean, and which views are
neighbours for the reprojection error.

- Yaw window: a synthetic sweep whose per-yaw scores are known numbers (distinct powers of two, so every subset
  of yaws has its own mean); the headline mean must be the mean over |yaw| <= max_yaw, both signs, the boundary
  included, with faces that were not found (None) left out.
- Neighbour pairs: a rig of look-at cameras on several pitch rows, each optical axis known from its (yaw, pitch);
  the expected neighbour is the nearest axis by angle, computed here from the angles alone. With more than one
  pitch row, a rotation's row and its column differ, so reading the wrong camera axis fails.
"""

import numpy as np
import pytest

from configs import evaluate as evaluate_config
from splatshot_jax import cameras as cam_lib
from splatshot_jax.jobs import evaluation


def _scores(yaws, missing=()):
  """Distinct powers of two per yaw (dlib), 1 - that / 2^12 (ArcFace); None at the yaws in `missing`."""
  dl = [None if y in missing else float(2.0 ** k) for k, y in enumerate(yaws)]
  af = [None if v is None else 1.0 - v / 2.0 ** 12 for v in dl]
  return {"dlib": dl, "arcface": af}


@pytest.mark.parametrize("missing", [(), (-30.0, 15.0)])
def test_headline_identity_is_the_mean_over_the_symmetric_yaw_window(missing):
  config = evaluate_config.get_config()
  yaws = [float(y) for y in config.yaws]
  max_yaw = float(config.max_yaw)
  assert min(yaws) < -max_yaw and max(yaws) > max_yaw, "the sweep must reach past the window on both sides"
  assert -max_yaw in yaws and max_yaw in yaws, "the boundary yaws must be in the sweep (both are inside)"
  scores = _scores(yaws, missing)
  inside = [k for k, y in enumerate(yaws) if -max_yaw <= y <= max_yaw]
  found = [k for k in inside if scores["dlib"][k] is not None]
  want_dl = sum(2.0 ** k for k in found) / len(found)
  want_af = sum(1.0 - 2.0 ** k / 2.0 ** 12 for k in found) / len(found)

  got = evaluation.summarize_identity(yaws, scores, max_yaw)
  assert got["dlib_mean_near_frontal"] == pytest.approx(want_dl, rel=1e-12), (got, yaws)
  assert got["arcface_mean_near_frontal"] == pytest.approx(want_af, rel=1e-12), got
  assert got["faces_found_near_frontal"] == f"{len(found)}/{len(inside)}"
  # The sweep is listed both ways round: the window is about |yaw|, not about the list's order.
  rev = {k: v[::-1] for k, v in scores.items()}
  assert evaluation.summarize_identity(yaws[::-1], rev, max_yaw)["dlib_mean_near_frontal"] == pytest.approx(
      want_dl, rel=1e-12)
  # And the CSV row carries the same headline number, and the yaw-0 value as the frontal one.
  row = evaluation.evaluation_row("p", "f", {"identity": {"yaws": yaws, **scores, **got}, "consistency": {}, "reprojection": {}}, "done")
  assert float(row["dlib_mean_near_frontal"]) == pytest.approx(want_dl, rel=1e-4), row
  if 0.0 not in missing:
    assert float(row["dlib_frontal"]) == pytest.approx(2.0 ** yaws.index(0.0), rel=1e-4), row


def test_yaw_window_edges_on_a_one_sided_sweep():
  """Yaws just inside and just outside the window on each side, in a sweep that is not symmetric."""
  yaws = [-31.0, -30.0, -29.5, 0.0, 29.9, 30.0, 30.5, 75.0]
  got = evaluation.summarize_identity(yaws, _scores(yaws), 30.0)
  inside = [1, 2, 3, 4, 5]
  assert got["dlib_mean_near_frontal"] == pytest.approx(sum(2.0 ** k for k in inside) / len(inside), rel=1e-12)
  assert got["faces_found_near_frontal"] == "5/5"


# A rig of look-at cameras: yaw about +y, pitch lifting towards +y, the yaw-0 pitch-0 camera on +z
# (cameras.orbit_rig's convention). Irregular angles, so every view's nearest axis is unique.
YAWS = (-70.0, -31.0, -4.0, 22.0, 61.0)
PITCHES = (-27.0, 3.0, 34.0)


def _axis(yaw_deg, pitch_deg):
  """Unit optical axis (camera -> target) of the camera at (yaw, pitch) looking at the origin."""
  y, p = np.radians(yaw_deg), np.radians(pitch_deg)
  centre = np.array([np.cos(p) * np.sin(y), np.sin(p), np.cos(p) * np.cos(y)])
  return -centre


def _rig():
  angles = [(y, p) for p in PITCHES for y in YAWS]
  centres = np.array([-_axis(y, p) * 2.5 for y, p in angles]) + [0.1, -0.2, 0.3]
  viewmat = cam_lib.look_at(centres, np.broadcast_to([0.1, -0.2, 0.3], centres.shape))
  K = np.broadcast_to(np.array([[50.0, 0, 32], [0, 50.0, 32], [0, 0, 1]]), (len(angles), 3, 3))
  return cam_lib.Camera(viewmat, K, 64, 64), angles


def test_neighbour_pairs_are_nearest_optical_axes_on_a_multi_row_rig():
  cams, angles = _rig()
  axes = np.array([_axis(y, p) for y, p in angles])
  cos = np.clip(axes @ axes.T, -1, 1)
  np.fill_diagonal(cos, -2.0)
  want = []
  for i in range(len(axes)):
    order = np.argsort(-cos[i])
    assert cos[i, order[0]] - cos[i, order[1]] > 1e-3, f"view {i}: no unique nearest axis in this rig"
    want.append((i, int(order[0])))
  got = evaluation.neighbour_pairs(cams)
  assert got == want
  # The rig really has cross-row neighbours (a single-row rig could not tell row from column).
  rows = {i: i // len(YAWS) for i in range(len(angles))}
  assert any(rows[i] != rows[j] for i, j in want)
