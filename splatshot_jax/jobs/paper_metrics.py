"""The SplatShot paper's evaluation protocol, so that our numbers can stand in the same table as the paper's.

  python -m experiments.run --config=configs/evaluate.py:paper --config.target=OUT --config.insightface=DIR \
      --config.fid_weights=pt_inception-2015-12-05-6726825d.pth --config.ffhq=FFHQ_DIR \
      --config.clip_iqa=clip_iqa_image.onnx --config.clip_iqa_text=clip_iqa_text.npy

Facts of the protocol, read from the authors' evaluation script (removed from github:hliang2/SplatShot, commit
3558b98, `evaluate_metrics.py`):
- test set: CelebA-3D ids 00000-00099 except 00001; views 005, 006, 008 and 011 of the 48-view rig; every metric
  twice, on the 3DGS renderings at those cameras and on the final diffusion outputs of those views;
- CSIM: ArcFace cosine (insightface's buffalo_l, det_size 640, largest face, L2-normalised, clamped to [-1, 1])
  between the photo and each view; a view without a detected face is skipped; mean over all (photo, view) pairs;
- CV-CSIM: the same cosine over the 6 pairs of the 4 views of each photo, mean over all pairs;
- FID: torchmetrics' FrechetInceptionDistance(feature=2048, normalize=True): Inception-v3 pool features of images
  resized to 299x299 (PIL LANCZOS); generated = the 4 views of every photo, reference = 5,000 images sampled with
  `random.seed(42)` from the sorted FFHQ file list (PNGs, then JPGs);
- CLIP-IQA: torchmetrics' CLIPImageQualityAssessment(prompts=("quality",)) = softmax(100 [cos(image, "Good
  photo."), cos(image, "Bad photo.")])[0], images resized to 224x224; mean over images;
- the README it removed also listed AKD (keypoint distance); its definition was not released. Here: the mean
  distance between the 68 dlib landmarks of the photo and of the run's frontal view, each set centred on its eye
  midpoint and divided by its inter-ocular distance (translation and scale removed; lower is better).
KID (not in the paper) is torchmetrics' KernelInceptionDistance on the same features (cubic polynomial kernel,
unbiased MMD^2, mean and std over random subsets).

Our run folders hold the diffusion outputs as views/view_NNN.png; the renderings are the avatar rendered at the same
cameras by the evaluation (evaluation/renderings/view_NNN.png); the photo is the run's config.json "photo".
Writes OUT/paper_metrics.json; `splatshot_jax.jobs.report` puts its table in OUT/report.html.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from splatshot_jax import errors
from splatshot_jax.face import detect
from splatshot_jax.face.detect import LEFT_EYE, RIGHT_EYE
from splatshot_jax.io import images as image_io
from splatshot_jax.jobs import outputs

PAPER_VIEWS = (5, 6, 8, 11)  # of the 48-view rig
VIEW_PAIRS = tuple(itertools.combinations(range(len(PAPER_VIEWS)), 2))  # the 6 pairs of CV-CSIM
PAPER_IDS = tuple(f"{i:05d}" for i in range(100) if i != 1)  # CelebA-3D test ids (00001 left out by the authors)
FFHQ_SUBSET = 5000
FFHQ_SEED = 42
FID_SIZE = 299
CLIP_SIZE = 224
CLIP_PROMPTS = ("Good photo.", "Bad photo.")  # torchmetrics' "quality" pair
CLIP_LOGIT_SCALE = 100.0
SOURCES = {"renders": "3DGS renderings", "diffusion": "final diffusion outputs"}
RENDERINGS = "evaluation/renderings"  # under a run folder: the avatar rendered at the run's cameras

TURNTABLE_NOTE = ("The official turntable videos cannot be scored by this protocol: they are 150-frame turntables, "
                  "not renderings at cameras 005, 006, 008 and 011 of the 48-view rig, and hold no diffusion outputs. "
                  "They are not mixed into this table (our own identity table above scores them frame by frame).")


class PaperMetricsError(errors.UserInputError):
  """A file of the paper protocol (weights, reference folder) is missing or has an unexpected layout."""


# ----------------------------------------------------------------------------------------------
# Which images.


def view_name(index: int) -> str:
  return f"view_{index:03d}.png"


def view_files(folder) -> dict[str, list[Path]]:
  """The 4 scored images of a run folder per source: {"renders": [...], "diffusion": [...]} (may not exist)."""
  folder = Path(folder)
  return {"renders": [folder / RENDERINGS / view_name(i) for i in PAPER_VIEWS],
          "diffusion": [folder / "views" / view_name(i) for i in PAPER_VIEWS]}


def save_renderings(folder, rgb: np.ndarray, frontal: int = 0) -> list[Path]:
  """Writes the avatar's renders of the paper's views and of the frontal view (AKD),
  folder/evaluation/renderings/view_NNN.png (8-bit PNGs, as the official renderings/); views the rig does not have
  are left out.

  Args:
    rgb: (V, H, W, 3) float in [0, 1], the avatar rendered at the run's V cameras.
  """
  written = []
  for i in sorted(set(PAPER_VIEWS) | {int(frontal)}):
    if i < len(rgb):
      written.append(Path(folder) / RENDERINGS / view_name(i))
      image_io.save_image(written[-1], image_io.to_uint8(rgb[i]))
  return written


def reference_files(folder) -> list[Path]:
  """The FFHQ file list as the authors build it: the sorted PNGs under `folder`, then the sorted JPGs."""
  folder = Path(folder).expanduser()
  return sorted(folder.glob("**/*.png")) + sorted(folder.glob("**/*.jpg"))


def sample_reference(files: Sequence[Path], n: int = FFHQ_SUBSET, seed: int = FFHQ_SEED) -> list[Path]:
  """`n` of `files` drawn by Python's `random` seeded with `seed` (the authors' `random.seed(42);
  random.sample(files, min(5000, len(files)))`; all of them, shuffled, when there are fewer)."""
  random.seed(seed)
  return random.sample(list(files), min(n, len(files)))


def ffhq_subset(folder, n: int = FFHQ_SUBSET, seed: int = FFHQ_SEED) -> list[Path]:
  """The FID / KID reference images: `sample_reference(reference_files(folder), n, seed)`."""
  return sample_reference(reference_files(folder), n, seed)


def load_rgb(path) -> np.ndarray:
  """(H, W, 3) uint8, PIL's convert("RGB") as the authors load images."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  with Image.open(path) as im:
    return np.asarray(im.convert("RGB"))


def resized(image: np.ndarray, size: int, resample: str) -> np.ndarray:
  """(size, size, 3) uint8 by PIL ("lanczos" for FID, as the authors; "bilinear" = torchvision's Resize for
  CLIP-IQA on PIL images)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  mode = {"lanczos": Image.LANCZOS, "bilinear": Image.BILINEAR}[resample]
  return np.asarray(Image.fromarray(np.asarray(image, np.uint8)).resize((size, size), mode))


# ----------------------------------------------------------------------------------------------
# Identity.


def cosine(a: np.ndarray, b: np.ndarray) -> float:
  """Dot product of two unit embeddings clamped to [-1, 1]."""
  return float(np.clip(np.dot(np.asarray(a, np.float64), np.asarray(b, np.float64)), -1.0, 1.0))


def csim(photos: Sequence[np.ndarray | None], views: Sequence[Sequence[np.ndarray | None]]) -> dict:
  """CSIM: the photo-view cosine over every (photo, view) pair with a face in both.

  Args:
    photos: per photo its unit embedding, None when no face was found (or no photo).
    views: per photo its views' embeddings (None: no face / no file).
  Returns:
    {"mean", "pairs" (scored), "skipped_views" (no face or file, photo usable), "skipped_photos"}.
  """
  scores, skipped_views, skipped_photos = [], 0, 0
  for p, vs in zip(photos, views):
    if p is None:
      skipped_photos += 1
      continue
    for v in vs:
      if v is None:
        skipped_views += 1
      else:
        scores.append(cosine(p, v))
  return {"mean": float(np.mean(scores)) if scores else None, "pairs": len(scores),
          "skipped_views": skipped_views, "skipped_photos": skipped_photos}


def cv_csim(views: Sequence[Sequence[np.ndarray | None]]) -> dict:
  """CV-CSIM: the cosine over the 6 pairs of each photo's 4 views (pairs with a face in both)."""
  scores, skipped_pairs = [], 0
  for vs in views:
    for i, j in VIEW_PAIRS:
      if vs[i] is None or vs[j] is None:
        skipped_pairs += 1
      else:
        scores.append(cosine(vs[i], vs[j]))
  return {"mean": float(np.mean(scores)) if scores else None, "pairs": len(scores), "skipped_pairs": skipped_pairs}


def akd(landmarks_a: np.ndarray, landmarks_b: np.ndarray) -> float:
  """Mean distance between two (68, 2) landmark sets, each centred on its eye midpoint and divided by its
  inter-ocular distance (eye centres, dlib's 36-41 / 42-47), in inter-ocular units."""
  def normalised(lm):
    lm = np.asarray(lm, np.float64)
    r, l = lm[list(RIGHT_EYE)].mean(0), lm[list(LEFT_EYE)].mean(0)
    return (lm - (r + l) / 2) / max(float(np.linalg.norm(l - r)), 1e-9)
  return float(np.linalg.norm(normalised(landmarks_a) - normalised(landmarks_b), axis=-1).mean())


# ----------------------------------------------------------------------------------------------
# FID, KID, CLIP-IQA: the math over features.


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean (D,) and unbiased covariance (D, D), float64, of (N, D) features (torchmetrics' FID statistics)."""
  f = np.asarray(features, np.float64)
  mu = f.mean(0)
  d = f - mu
  return mu, d.T @ d / max(len(f) - 1, 1)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
  """|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)), the trace term as the sum of the square roots of
  S1 S2's eigenvalues (real parts, negatives from round-off as 0), float64, as torchmetrics computes it."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  eig = np.linalg.eigvals(s1 @ s2)
  tr_sqrt = np.sqrt(np.clip(eig.real, 0.0, None)).sum()
  return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)


def fid(real: np.ndarray, fake: np.ndarray) -> float:
  """FID between two (N, D) feature sets."""
  return frechet_distance(*feature_stats(real), *feature_stats(fake))


def mmd2_poly(real: np.ndarray, fake: np.ndarray, degree: int = 3, gamma: float | None = None,
              coef: float = 1.0) -> float:
  """Unbiased MMD^2 with the polynomial kernel (gamma x.y + coef)^degree, gamma = 1 / D by default."""
  x, y = np.asarray(real, np.float64), np.asarray(fake, np.float64)
  gamma = 1.0 / x.shape[1] if gamma is None else gamma
  kxx, kyy = (gamma * x @ x.T + coef) ** degree, (gamma * y @ y.T + coef) ** degree
  kxy = (gamma * x @ y.T + coef) ** degree
  m, n = len(x), len(y)
  return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
               - 2.0 * kxy.mean())


def kid(real: np.ndarray, fake: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
        ) -> tuple[float, float]:
  """KID: mean and std (population) of `mmd2_poly` over `subsets` random draws of `subset_size` features from each
  set without replacement (torchmetrics' defaults; `subset_size` capped at the smaller set)."""
  rng = np.random.default_rng(seed)
  k = min(subset_size, len(real), len(fake))
  vals = [mmd2_poly(real[rng.permutation(len(real))[:k]], fake[rng.permutation(len(fake))[:k]])
          for _ in range(subsets)]
  return float(np.mean(vals)), float(np.std(vals))


def clip_iqa_scores(image_features: np.ndarray, text_features: np.ndarray) -> np.ndarray:
  """CLIP-IQA: softmax over (good, bad) of 100 x the cosine of each image with each prompt; (N,) P(good).

  Args:
    image_features: (N, D) CLIP image embeddings; text_features: (2, D) of "Good photo." and "Bad photo.".
  """
  a = np.asarray(image_features, np.float64)
  t = np.asarray(text_features, np.float64)
  a = a / np.linalg.norm(a, axis=1, keepdims=True)
  t = t / np.linalg.norm(t, axis=1, keepdims=True)
  logits = CLIP_LOGIT_SCALE * a @ t.T
  logits -= logits.max(1, keepdims=True)
  p = np.exp(logits)
  return p[:, 0] / p.sum(1)


# ----------------------------------------------------------------------------------------------
# Feature networks (the user's files).


class OnnxFeatures:
  """An ONNX network (N, 3, S, S) float32 RGB in [0, 1] -> (N, D) features (its first output), by onnxruntime."""

  def __init__(self, path, field: str):
    self.path = Path(path).expanduser()
    if not self.path.is_file():
      raise PaperMetricsError(f"config.{field}: no file at {self.path}")
    try:
      import onnxruntime  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise PaperMetricsError(f"config.{field}: an ONNX network needs onnxruntime (the [eval] extra)") from e
    self.session = onnxruntime.InferenceSession(str(self.path), providers=onnxruntime.get_available_providers())
    self.input = self.session.get_inputs()[0].name

  def __call__(self, images: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) uint8 -> (N, D) float64."""
    x = (np.asarray(images, np.uint8).astype(np.float32) / 255.0).transpose(0, 3, 1, 2)
    return np.asarray(self.session.run(None, {self.input: np.ascontiguousarray(x)})[0], np.float64).reshape(len(x), -1)


class TorchFidelityInception:
  """The FID Inception-v3 of torchmetrics (torch-fidelity's "inception-v3-compat", 2048 pool features) from the
  user's weights file (pt_inception-2015-12-05-6726825d.pth); needs the [paper] extra (torch, torch-fidelity).

  It takes the 8-bit images themselves: torchmetrics' normalize=True turns the authors' float32 x / 255 back with
  (x * 255).byte(), which gives every 8-bit value back exactly."""

  def __init__(self, path):
    try:
      from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise PaperMetricsError("config.fid_weights: a .pth Inception needs torch and torch-fidelity (pip install "
                              "'splatshot_jax[paper]'); or give an ONNX network") from e
    self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                           feature_extractor_weights_path=str(Path(path).expanduser())).eval()

  def __call__(self, images: np.ndarray) -> np.ndarray:
    import torch  # pylint: disable=import-outside-toplevel
    x = torch.from_numpy(np.ascontiguousarray(np.asarray(images, np.uint8).transpose(0, 3, 1, 2)))
    with torch.no_grad():
      return self.net(x)[0].double().numpy().reshape(len(x), -1)


def fid_network(path) -> Callable[[np.ndarray], np.ndarray]:
  """config.fid_weights: an ONNX network, or the .pth weights of the standard FID Inception (torch-fidelity)."""
  p = Path(path).expanduser()
  if p.suffix == ".onnx":
    return OnnxFeatures(p, "fid_weights")
  if not p.is_file():
    raise PaperMetricsError(f"config.fid_weights: no file at {p}")
  return TorchFidelityInception(p)


def batched_features(net: Callable, images: Sequence[np.ndarray], batch: int = 32) -> np.ndarray:
  """(N, D) features of N same-size uint8 images, `batch` at a time."""
  return np.concatenate([net(np.stack(images[s:s + batch])) for s in range(0, len(images), batch)])


# ----------------------------------------------------------------------------------------------
# The protocol over a batch folder.


def _embed_file(face, path: Path, cache: dict) -> np.ndarray | None:
  if path not in cache:
    cache[path] = face.embed(load_rgb(path)) if path.is_file() else None
  return cache[path]


def _landmarks(path: Path) -> np.ndarray | None:
  try:
    return detect.analyze_photo(load_rgb(path), warn_multiple=False).landmarks68
  except detect.FaceError:
    return None


def evaluate_paper(out_dir, folders: Sequence[Path], photos: Sequence[str], frontal: Sequence[int], config,
                   face=None) -> dict:
  """The protocol over the run folders of a batch; writes OUT/paper_metrics.json.

  Args:
    folders: the finished run folders; photos: their photo files; frontal: their frontal view index (AKD).
    config: configs/evaluate.py (insightface, fid_weights, ffhq, clip_iqa, clip_iqa_text, kid_subsets, ...).
    face: an object with `embed(image) -> unit embedding | None` (default `scrfd.InsightFace(config.insightface)`).
  Returns:
    {"renders": {...}, "diffusion": {...}, "views": [5, 6, 8, 11], "photos": n, ...} (also the JSON file).
  """
  if face is None and config.insightface:
    from splatshot_jax.face import scrfd  # pylint: disable=import-outside-toplevel
    face = scrfd.InsightFace(config.insightface, det_size=config.det_size)
  cache: dict = {}
  stems = {Path(p).stem for p in photos if p}
  res: dict = {"views": list(PAPER_VIEWS), "photos": len(folders), "sources": SOURCES,
               "turntables": TURNTABLE_NOTE, "missing_files": {},
               "paper_test_set": {"of": len(PAPER_IDS), "here": len(stems & set(PAPER_IDS)),
                                  "others": len(stems - set(PAPER_IDS))}}
  photo_emb = [_embed_file(face, Path(p).expanduser(), cache) if p else None for p in photos] if face else None
  files = [view_files(f) for f in folders]
  if config.ffhq and config.fid_weights:
    ref_files = ffhq_subset(config.ffhq, config.ffhq_subset, FFHQ_SEED)
    net = fid_network(config.fid_weights)
    ref = batched_features(net, [resized(load_rgb(p), FID_SIZE, "lanczos") for p in ref_files])
    res["ffhq"] = {"folder": str(config.ffhq), "images": len(ref_files),
                   "first": [str(p.relative_to(Path(config.ffhq).expanduser())) for p in ref_files[:3]]}
  clip = None
  if config.clip_iqa:
    clip = OnnxFeatures(config.clip_iqa, "clip_iqa")
    text = np.load(Path(config.clip_iqa_text).expanduser())
  for source in SOURCES:
    paths = [fs[source] for fs in files]
    existing = [p for ps in paths for p in ps if p.is_file()]
    out: dict = {"images": len(existing)}
    res["missing_files"][source] = sum(len(ps) for ps in paths) - len(existing)
    if face is not None:
      views = [[_embed_file(face, p, cache) for p in ps] for ps in paths]
      out["csim"], out["cv_csim"] = csim(photo_emb, views), cv_csim(views)
      out["views_without_face"] = sum(v is None and p.is_file() for vs, ps in zip(views, paths)
                                      for v, p in zip(vs, ps))
    if "ffhq" in res and existing:
      gen = batched_features(net, [resized(load_rgb(p), FID_SIZE, "lanczos") for p in existing])
      out["fid"] = fid(ref, gen)
      if len(existing) >= 2:
        out["kid_mean"], out["kid_std"] = kid(ref, gen, config.kid_subsets, config.kid_subset_size)
    if clip is not None and existing:
      feats = batched_features(clip, [resized(load_rgb(p), CLIP_SIZE, "bilinear") for p in existing])
      out["clip_iqa"] = float(clip_iqa_scores(feats, text).mean())
    # AKD: the photo's landmarks against the frontal view's (its render or diffusion output).
    dists = []
    for folder, photo, k in zip(folders, photos, frontal):
      view = (Path(folder) / RENDERINGS / view_name(k)) if source == "renders" else Path(folder) / "views" / view_name(k)
      a = _landmarks(Path(photo).expanduser()) if photo and Path(photo).expanduser().is_file() else None
      b = _landmarks(view) if a is not None and view.is_file() else None
      if b is not None:
        dists.append(akd(a, b))
    out["akd"] = {"mean": float(np.mean(dists)) if dists else None, "pairs": len(dists),
                  "skipped": len(folders) - len(dists)}
    res[source] = out
  outputs.write_json(Path(out_dir) / "paper_metrics.json", res)
  return res
