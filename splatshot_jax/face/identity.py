"""Face identity with dlib's face-recognition ResNet (128-D, the same backend as the landmarks).

The network (ResNet-29, trained with a metric loss on ~3M faces) maps an aligned 150x150 face chip to
a 128-D embedding; dlib's authors use Euclidean distance < 0.6 for "same person" (99.38% on LFW).
The chip is cut from the 68 landmarks by dlib itself (`get_face_chip`).
"""

from __future__ import annotations

import functools
from typing import Optional

import numpy as np

from splatshot_jax.face.detect import FaceAnalysis, ImageLike, analyze_photo, as_rgb_uint8, model_path

# dlib's own decision threshold for its ResNet embeddings ("same person" below it).
SAME_PERSON_THRESHOLD = 0.6


@functools.lru_cache(maxsize=None)
def _recognizer():
  import dlib
  return dlib.face_recognition_model_v1(model_path("dlib_face_recognition_resnet_model_v1.dat"))


def identity_embedding(image: ImageLike, analysis: Optional[FaceAnalysis] = None, *,
                       num_jitters: int = 0, **analyze_kwargs) -> np.ndarray:
  """128-D identity embedding of the (largest) face of an image.

  Args:
    image: path or (H, W, 3) uint8 RGB array.
    analysis: the image's `FaceAnalysis`; detected with `analyze_photo(image, **analyze_kwargs)`
      when omitted (so NoFaceError / FaceTooSmallError propagate).
    num_jitters: dlib's test-time augmentation (random crops/flips averaged); 0 = deterministic.

  Returns:
    (128,) float32 embedding (unit-ish norm; compare with Euclidean distance).
  """
  import dlib
  img = as_rgb_uint8(image)
  if analysis is None:
    analysis = analyze_photo(img, **analyze_kwargs)
  x0, y0, x1, y1 = [int(round(float(v))) for v in analysis.box]
  # Back to dlib's integer pixel indices (analysis coordinates are pixel centres at +0.5).
  pts = [dlib.point(int(round(x - 0.5)), int(round(y - 0.5))) for x, y in analysis.landmarks68]
  shape = dlib.full_object_detection(dlib.rectangle(x0, y0, x1 - 1, y1 - 1), pts)
  emb = _recognizer().compute_face_descriptor(img, shape, num_jitters)
  return np.asarray(emb, np.float32)


def embedding_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Euclidean distance between (..., 128) embeddings, broadcasting."""
  return np.linalg.norm(np.asarray(a, np.float32) - np.asarray(b, np.float32), axis=-1)


def identity_distance(img_a: ImageLike, img_b: ImageLike, **kwargs) -> float:
  """Identity distance between the main faces of two images (< 0.6: same person for dlib).

  Args:
    img_a, img_b: paths or (H, W, 3) uint8 RGB arrays.
    **kwargs: passed to `identity_embedding` (num_jitters, detector, min_face_px, ...).
  """
  return float(embedding_distance(identity_embedding(img_a, **kwargs),
                                  identity_embedding(img_b, **kwargs)))
