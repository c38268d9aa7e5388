"""insightface's face analysis for ArcFace identity, as the SplatShot paper's CSIM uses it: SCRFD detection and the
five-point similarity crop, run from the user's ONNX files with onnxruntime (no insightface package needed).

  face = InsightFace("models/buffalo_l")        # det_10g.onnx + w600k_r50.onnx (insightface's default pack)
  e = face.embed(image)                         # (512,) unit ArcFace embedding of the largest face, or None

Definitions follow insightface (model_zoo/scrfd.py, utils/face_align.py, app/face_analysis.py):
- detector input: the image resized (bilinear, no anti-aliasing, as cv2.resize) to fit det_size (640x640) keeping
  its aspect ratio, pasted top-left on black; RGB, (x - 127.5) / 128, NCHW;
- outputs: per stride (8, 16, 32; 2 anchors per location for the 9-output models, 5 strides and 1 anchor for the
  15-output ones) the scores (A, 1), box distances (A, 4) and 5 keypoint offsets (A, 10), all in stride units;
  anchors at (x, y) * stride over the feature map, the anchors of one location adjacent;
- scores >= 0.5 kept, sorted by score (stable), greedy NMS at IoU 0.4 with insightface's "+1" box areas;
- recognition: the five keypoints mapped by the least-squares similarity onto insightface's 112x112 template,
  bilinear, black outside (cv2.warpAffine); RGB, (x - 127.5) / 127.5, NCHW; the embedding L2-normalised here.
Keypoints and boxes are in pixel-index coordinates (pixel centres at integers), as insightface's; the warps in
`splatshot_jax.face.align` use continuous coordinates (centres at + 0.5), converted at the boundary.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from splatshot_jax import errors
from splatshot_jax.face import align

# insightface's five-point template of its 112x112 ArcFace input (right eye, left eye, nose tip, right and left
# mouth corners of the subject, i.e. image left to right), in pixel-index coordinates (pixel centres at integers).
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)
ARCFACE_SIZE = 112

DET_SIZE = 640  # insightface's FaceAnalysis.prepare(det_size=(640, 640)), the paper's
DET_THRESH = 0.5
NMS_THRESH = 0.4
DETECTOR_FILE = "det_10g.onnx"  # buffalo_l's SCRFD-10GF
RECOGNITION_FILE = "w600k_r50.onnx"  # buffalo_l's ArcFace R50 (WebFace600K)


class InsightFaceError(errors.UserInputError):
  """The insightface model folder is missing a file or a model has an unexpected layout."""


@dataclasses.dataclass(frozen=True)
class Faces:
  """Detections of one image, best score first.

  Attributes:
    boxes: (F, 4) float32 x1, y1, x2, y2; scores: (F,) float32; kps: (F, 5, 2) float32 (pixel-index coordinates).
  """

  boxes: np.ndarray
  scores: np.ndarray
  kps: np.ndarray

  def __len__(self) -> int:
    return len(self.scores)

  def largest(self) -> int:
    """Index of the largest box (area (x2 - x1) (y2 - y1); the first of equals), the paper's choice of face."""
    area = (self.boxes[:, 2] - self.boxes[:, 0]) * (self.boxes[:, 3] - self.boxes[:, 1])
    return int(np.argmax(area))


def resize_linear(image: np.ndarray, width: int, height: int) -> np.ndarray:
  """cv2.resize(image, (width, height)) with INTER_LINEAR: half-pixel centres, edge clamp, no anti-aliasing."""
  h, w = image.shape[:2]
  m = np.array([[width / w, 0.0, 0.0], [0.0, height / h, 0.0]])
  out, _ = align.warp_affine(image, m, (height, width), border="edge", prefilter=False)
  return out


def detector_input(image: np.ndarray, det_size: int = DET_SIZE) -> tuple[np.ndarray, float]:
  """The SCRFD input image: (det_size, det_size, 3) uint8 (the image scaled to fit, top-left) and the scale."""
  h, w = image.shape[:2]
  if h / w > 1.0:
    new_h, new_w = det_size, int(det_size / (h / w))
  else:
    new_w, new_h = det_size, int(det_size * (h / w))
  out = np.zeros((det_size, det_size, 3), np.uint8)
  out[:new_h, :new_w] = resize_linear(np.asarray(image, np.uint8), new_w, new_h)
  return out, new_h / h


def anchor_centers(height: int, width: int, stride: int, num_anchors: int) -> np.ndarray:
  """(height * width * num_anchors, 2) float32 anchor points (x, y) * stride, row-major, anchors adjacent."""
  ys, xs = np.mgrid[:height, :width]
  centers = (np.stack([xs, ys], -1).astype(np.float32) * stride).reshape(-1, 2)
  return np.repeat(centers, num_anchors, axis=0)


def layout(num_outputs: int) -> tuple[tuple[int, ...], int]:
  """(strides, anchors per location) of an SCRFD model with keypoints, from its number of outputs."""
  if num_outputs == 9:
    return (8, 16, 32), 2
  if num_outputs == 15:
    return (8, 16, 32, 64, 128), 1
  raise InsightFaceError(f"SCRFD model: {num_outputs} outputs; expected 9 or 15 (a detector with keypoints, "
                         "e.g. buffalo_l's det_10g.onnx)")


def decode(outputs: Sequence[np.ndarray], input_hw: tuple[int, int], threshold: float = DET_THRESH
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Candidates of the SCRFD outputs above `threshold`, in the detector input's pixel coordinates.

  Args:
    outputs: the model's outputs in their order: scores per stride, then box distances, then keypoint offsets;
      each (A, C) or (1, A, C).
    input_hw: the detector input's (H, W).
  Returns:
    scores (K,), boxes (K, 4), kps (K, 5, 2) float32, stride by stride (not sorted).
  """
  strides, num_anchors = layout(len(outputs))
  fmc = len(strides)
  scores, boxes, kps = [], [], []
  for i, stride in enumerate(strides):
    s, b, k = (np.asarray(outputs[i + j * fmc], np.float32) for j in range(3))
    s, b, k = (x[0] if x.ndim == 3 else x for x in (s, b, k))
    centers = anchor_centers(input_hw[0] // stride, input_hw[1] // stride, stride, num_anchors)
    keep = np.nonzero(s.reshape(-1) >= threshold)[0]
    b, k, c = b[keep] * stride, k[keep] * stride, centers[keep]
    scores.append(s.reshape(-1)[keep])
    boxes.append(np.concatenate([c - b[:, :2], c + b[:, 2:]], 1))
    kps.append(c[:, None, :] + k.reshape(-1, 5, 2))
  return (np.concatenate(scores).astype(np.float32), np.concatenate(boxes).astype(np.float32),
          np.concatenate(kps).astype(np.float32))


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float = NMS_THRESH) -> np.ndarray:
  """Greedy non-maximum suppression (insightface's: areas (x2 - x1 + 1) (y2 - y1 + 1)); kept indices, best first."""
  x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
  areas = (x2 - x1 + 1) * (y2 - y1 + 1)
  order = np.argsort(-scores, kind="stable")
  keep = []
  while order.size:
    i, rest = order[0], order[1:]
    keep.append(i)
    w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
    h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
    inter = w * h
    order = rest[inter / (areas[i] + areas[rest] - inter) <= threshold]
  return np.asarray(keep, np.int64)


def norm_crop(image: np.ndarray, kps: np.ndarray, size: int = ARCFACE_SIZE) -> np.ndarray:
  """insightface's `norm_crop`: (size, size, 3) uint8, the face's five points on the ArcFace template.

  Args:
    image: (H, W, 3) uint8; kps: (5, 2) pixel-index coordinates (insightface's, e.g. `Faces.kps[i]`).
  """
  dst = ARCFACE_TEMPLATE * (size / ARCFACE_SIZE)
  m = align.similarity_transform(np.asarray(kps, np.float64) + 0.5, dst + 0.5)  # continuous coordinates
  crop, _ = align.warp_affine(np.asarray(image, np.uint8), m, (size, size), border="constant", fill=0.0,
                              prefilter=False)
  return crop


def _session(path: Path):
  try:
    import onnxruntime  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise InsightFaceError("config.insightface needs onnxruntime: pip install onnxruntime (the [eval] extra)") from e
  return onnxruntime.InferenceSession(str(path), providers=onnxruntime.get_available_providers())


def model_folder(root) -> Path:
  """The folder of a `buffalo_l` pack under `root` (root itself, root/buffalo_l or root/models/buffalo_l)."""
  root = Path(root).expanduser()
  for d in (root, root / "buffalo_l", root / "models" / "buffalo_l"):
    if (d / DETECTOR_FILE).is_file() and (d / RECOGNITION_FILE).is_file():
      return d
  raise InsightFaceError(f"config.insightface={str(root)!r}: no {DETECTOR_FILE} and {RECOGNITION_FILE} there, nor in "
                         "buffalo_l/ or models/buffalo_l/ below it (insightface's buffalo_l pack, your files)")


class InsightFace:
  """SCRFD detection + ArcFace recognition of a buffalo_l folder (`model_folder`), run by onnxruntime."""

  def __init__(self, root, det_size: int = DET_SIZE):
    folder = model_folder(root)
    self.det = _session(folder / DETECTOR_FILE)
    self.rec = _session(folder / RECOGNITION_FILE)
    self.det_size = int(det_size)
    layout(len(self.det.get_outputs()))  # fails early on a detector without keypoints
    shape = self.rec.get_inputs()[0].shape
    self.rec_size = int(shape[2]) if len(shape) == 4 and isinstance(shape[2], int) else ARCFACE_SIZE

  def detect(self, image: np.ndarray) -> Faces:
    """Faces of an (H, W, 3) uint8 RGB image, in its pixel-index coordinates, best score first."""
    det_img, scale = detector_input(image, self.det_size)
    x = ((det_img.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)[None]
    outs = self.det.run(None, {self.det.get_inputs()[0].name: x})
    scores, boxes, kps = decode(outs, det_img.shape[:2])
    order = np.argsort(-scores, kind="stable")
    scores, boxes, kps = scores[order], boxes[order] / scale, kps[order] / scale
    keep = nms(boxes, scores)
    return Faces(boxes[keep], scores[keep], kps[keep])

  def embed_crop(self, crop: np.ndarray) -> np.ndarray:
    """(D,) float32 unit embedding of a (112, 112, 3) uint8 aligned crop."""
    x = ((crop.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]
    e = np.asarray(self.rec.run(None, {self.rec.get_inputs()[0].name: x})[0], np.float32).reshape(-1)
    return e / max(float(np.linalg.norm(e)), 1e-12)

  def embed(self, image: np.ndarray) -> np.ndarray | None:
    """(D,) float32 unit ArcFace embedding of the largest detected face of an (H, W, 3) uint8 RGB image; None
    when no face is detected."""
    faces = self.detect(image)
    if not len(faces):
      return None
    return self.embed_crop(norm_crop(image, faces.kps[faces.largest()], self.rec_size))
