"""Face detection and 68-point landmarks with dlib (the default face backend).

dlib's HOG frontal-face detector (optional: its CNN "mmod" detector) finds faces, its 68-point shape
predictor (iBUG 300-W markup) places landmarks, and the model files come from `face_recognition_models`,
so everything runs offline from registry packages.

Coordinates: every landmark and box returned here is in *continuous* pixel coordinates with pixel centres
at integer + 0.5, the convention of `splatshot_jax.cameras.Camera` (dlib reports integer pixel indices;
we add 0.5). x is the column, y the row.

68-point layout (0-based): jaw 0-16, right brow 17-21, left brow 22-26 (the subject's right/left, i.e.
image left/right on a frontal photo), nose bridge 27-30, nose base 31-35, right eye 36-41, left eye 42-47,
outer lips 48-59, inner lips 60-67.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import warnings
from typing import Union

import numpy as np

from splatshot_jax import errors

ImageLike = Union[str, os.PathLike, np.ndarray]

# Below this box side the 68-point predictor becomes unreliable (its features are ~1-2 px apart)
# and the crop would be upsampled > 3x for the 256-512 px templates.
MIN_FACE_PX = 64

# Retries that upsample the image to find small faces are capped by this many upsampled pixels, so
# a large blank photo is not upsampled into a very slow search.
_MAX_UPSAMPLED_PIXELS = 4_000_000

JAW = tuple(range(0, 17))
RIGHT_BROW = tuple(range(17, 22))
LEFT_BROW = tuple(range(22, 27))
NOSE_BRIDGE = tuple(range(27, 31))
NOSE_BASE = tuple(range(31, 36))
RIGHT_EYE = tuple(range(36, 42))
LEFT_EYE = tuple(range(42, 48))
OUTER_LIPS = tuple(range(48, 60))
INNER_LIPS = tuple(range(60, 68))


class FaceError(errors.UserError, ValueError):
  """Base class of the photo-analysis errors (the photo cannot be used as is)."""


class NoFaceError(FaceError):
  """No face was found in the image."""


class FaceTooSmallError(FaceError):
  """A face was found but it is smaller than the minimum size."""


@dataclasses.dataclass(frozen=True)
class FaceAnalysis:
  """The chosen face of a photo.

  Attributes:
    box: (4,) float32 (x0, y0, x1, y1) detector box, continuous pixel coordinates.
    landmarks68: (68, 2) float32 (x, y) landmarks, continuous pixel coordinates.
    score: detector confidence of the chosen face (HOG: SVM margin; CNN: mmod score).
    face_size_px: sqrt(box width * box height) in pixels.
    image_hw: (H, W) of the analysed image.
    num_faces: how many faces the detector found (the largest was chosen).
    all_boxes: (num_faces, 4) float32 boxes of every face found, largest first.
    detector: "hog" or "cnn".
  """

  box: np.ndarray
  landmarks68: np.ndarray
  score: float
  face_size_px: float
  image_hw: tuple[int, int]
  num_faces: int
  all_boxes: np.ndarray
  detector: str

  @property
  def eye_centers(self) -> np.ndarray:
    """(2, 2) float32: centres of the subject's right and left eye (image left, right)."""
    lm = self.landmarks68
    return np.stack([lm[list(RIGHT_EYE)].mean(0), lm[list(LEFT_EYE)].mean(0)])


# ----------------------------------------------------------------------------- model files

def model_path(name: str) -> str:
  """Path of a dlib model file bundled with `face_recognition_models`.

  The package's own helpers import `pkg_resources` (absent from recent setuptools), so the package
  directory is located without importing it.

  Args:
    name: file name, e.g. "shape_predictor_68_face_landmarks.dat".
  """
  spec = importlib.util.find_spec("face_recognition_models")
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError(
        "face_recognition_models is not installed; `pip install face_recognition_models` provides "
        "dlib's detector, landmark and face-recognition model files")
  path = os.path.join(list(spec.submodule_search_locations)[0], "models", name)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: dlib model file missing from face_recognition_models")
  return path


# Model objects are immutable once loaded; caching them avoids re-reading 100 MB per call.
@functools.lru_cache(maxsize=None)
def _hog_detector():
  import dlib
  return dlib.get_frontal_face_detector()


@functools.lru_cache(maxsize=None)
def _cnn_detector():
  import dlib
  return dlib.cnn_face_detection_model_v1(model_path("mmod_human_face_detector.dat"))


@functools.lru_cache(maxsize=None)
def _shape_predictor_68():
  import dlib
  return dlib.shape_predictor(model_path("shape_predictor_68_face_landmarks.dat"))


# ----------------------------------------------------------------------------- images

def as_rgb_uint8(image: ImageLike, *, name: str = "image") -> np.ndarray:
  """Loads or validates an image as (H, W, 3) uint8 RGB (C-contiguous, as dlib wants).

  Args:
    image: a path (read with `splatshot_jax.io.images.load_image`: EXIF orientation, grayscale,
      RGBA, CMYK, 16-bit) or an array (H, W), (H, W, 1|3|4) of uint8, or float in [0, 1].
    name: how to call the image in error messages.
  """
  if isinstance(image, (str, os.PathLike)):
    from splatshot_jax.io.images import load_image  # raises ImageError naming the file
    name = os.fspath(image)
    image = load_image(image)
  arr = np.asarray(image)
  if arr.ndim == 3 and arr.shape[-1] == 1:
    arr = arr[..., 0]
  if arr.ndim == 2:
    arr = np.repeat(arr[..., None], 3, axis=-1)
  if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
    raise ValueError(f"{name}: expected an (H, W, 3) RGB image, got shape {arr.shape}")
  arr = arr[..., :3]
  if arr.dtype == np.uint8:
    pass
  elif np.issubdtype(arr.dtype, np.floating):
    arr = np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8)
  elif arr.dtype == np.uint16:
    arr = (arr.astype(np.uint32) * 255 // 65535).astype(np.uint8)
  else:
    raise ValueError(f"{name}: expected uint8, uint16 or float pixels, got {arr.dtype}")
  return np.ascontiguousarray(arr)


# ----------------------------------------------------------------------------- detection

def _rect_to_box(r) -> np.ndarray:
  # dlib rectangles are inclusive pixel indices: the box covers [left, right + 1) in continuous units.
  return np.array([r.left(), r.top(), r.right() + 1, r.bottom() + 1], np.float32)


def _box_size(box: np.ndarray) -> float:
  return float(np.sqrt(max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)))


def detect_faces(image: np.ndarray, *, detector: str = "hog", upsample: int = 0
                 ) -> tuple[np.ndarray, np.ndarray]:
  """All faces the detector finds at one upsampling level.

  Args:
    image: (H, W, 3) uint8 RGB.
    detector: "hog" (fast, frontal to ~45 deg yaw) or "cnn" (mmod; slower, more poses).
    upsample: how many times dlib doubles the image first (finds faces down to ~80 / 2**upsample px
      with HOG, ~40 / 2**upsample with the CNN).

  Returns:
    boxes: (F, 4) float32 (x0, y0, x1, y1), sorted largest first.
    scores: (F,) float32 detector confidences.
  """
  if detector == "hog":
    rects, scores, _ = _hog_detector().run(image, upsample, 0.0)
    rects, scores = list(rects), list(scores)
  elif detector == "cnn":
    dets = _cnn_detector()(image, upsample)
    rects, scores = [d.rect for d in dets], [d.confidence for d in dets]
  else:
    raise ValueError(f"detector: expected 'hog' or 'cnn', got {detector!r}")
  boxes = np.array([_rect_to_box(r) for r in rects], np.float32).reshape(-1, 4)
  scores = np.array(scores, np.float32).reshape(-1)
  order = np.argsort([-_box_size(b) for b in boxes], kind="stable")
  return boxes[order], scores[order]


def landmarks68(image: np.ndarray, box: np.ndarray) -> np.ndarray:
  """68 landmarks of the face in `box`.

  Args:
    image: (H, W, 3) uint8 RGB.
    box: (4,) (x0, y0, x1, y1) continuous pixel coordinates (as from `detect_faces`).

  Returns:
    (68, 2) float32 (x, y) continuous pixel coordinates.
  """
  import dlib
  x0, y0, x1, y1 = [int(round(float(v))) for v in box]
  shape = _shape_predictor_68()(image, dlib.rectangle(x0, y0, x1 - 1, y1 - 1))
  pts = np.array([[p.x, p.y] for p in shape.parts()], np.float32)
  return pts + 0.5


def analyze_photo(image: ImageLike, *, detector: str = "hog", min_face_px: float = MIN_FACE_PX,
                  upsample: int = 0, max_upsample: int = 3, warn_multiple: bool = True
                  ) -> FaceAnalysis:
  """Detects the photo's face (the largest one) and its 68 landmarks.

  Detection runs at `upsample` first; when nothing is found it retries with the image upsampled
  (up to `max_upsample` doublings and ~4 Mpx) so that a small face is reported as too small rather
  than missing.

  Args:
    image: a path (any common format, see `as_rgb_uint8`) or an (H, W, 3) uint8 / float array.
    detector: "hog" (default) or "cnn".
    min_face_px: smallest accepted face, as sqrt(box area) in pixels (dlib's box spans brows to chin).
    upsample: initial dlib upsampling level.
    max_upsample: highest upsampling level tried when nothing is found.
    warn_multiple: warn (UserWarning) when several faces are found.

  Returns:
    FaceAnalysis of the largest face.

  Raises:
    NoFaceError: no face anywhere in the image.
    FaceTooSmallError: the largest face is smaller than `min_face_px`.
    splatshot_jax.io.images.ImageError (a ValueError): missing or unreadable image file.
  """
  name = os.fspath(image) if isinstance(image, (str, os.PathLike)) else "image"
  img = as_rgb_uint8(image, name=name)
  h, w = img.shape[:2]
  boxes, scores = detect_faces(img, detector=detector, upsample=upsample)
  level = upsample
  while len(boxes) == 0 and level < max_upsample and h * w * 4 ** (level + 1) <= _MAX_UPSAMPLED_PIXELS:
    level += 1
    boxes, scores = detect_faces(img, detector=detector, upsample=level)
  if len(boxes) == 0:
    raise NoFaceError(
        f"{name}: no face found ({w}x{h} px, dlib {detector} detector, image upsampled up to {2 ** level}x); "
        "use a photo with one clearly visible, roughly frontal face")
  size = _box_size(boxes[0])
  if size < min_face_px:
    raise FaceTooSmallError(
        f"{name}: the face is {size:.0f} px (box {boxes[0][2] - boxes[0][0]:.0f}x"
        f"{boxes[0][3] - boxes[0][1]:.0f}) but at least {min_face_px:.0f} px is needed; "
        "use a larger or less tightly downscaled photo")
  if len(boxes) > 1 and warn_multiple:
    sizes = ", ".join(f"{_box_size(b):.0f}" for b in boxes)
    warnings.warn(f"{name}: {len(boxes)} faces found (sizes {sizes} px); using the largest",
                  UserWarning, stacklevel=2)
  return FaceAnalysis(box=boxes[0], landmarks68=landmarks68(img, boxes[0]), score=float(scores[0]),
                      face_size_px=size, image_hw=(h, w), num_faces=len(boxes), all_boxes=boxes,
                      detector=detector)
