"""Template choice: the template closest to a photo (skin colour, landmark shape, optionally CLIP)."""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Optional, Sequence

import jax
import numpy as np

from splatshot_jax.face import features as face_features
from splatshot_jax.face.detect import as_rgb_uint8
from splatshot_jax.face.landmarks3d import project_landmarks
from splatshot_jax.io import images as image_io
from splatshot_jax.templates.folder import Template

# ----------------------------------------------------------------------------------------------
# Template choice.

Embedder = Callable[[np.ndarray], np.ndarray]


def clip_embedder(model, params) -> Embedder:
  """An `Embedder` from diffusion.clip's CLIPVisionModelWithProjection (e.g. the IP-Adapter encoder).

  Returns:
    f(image (H, W, 3) uint8) -> (D,) float32 image embedding.
  """
  from splatshot_jax.diffusion import clip  # pylint: disable=import-outside-toplevel
  apply = jax.jit(lambda p, x: model.apply({"params": p}, x).image_embeds)
  return lambda image: np.asarray(apply(params, clip.preprocess_image(image)[None]))[0]


def template_features(t: Template, *, embedder: Optional[Embedder] = None) -> face_features.FaceFeatures:
  """Template-choice features of a template's frontal view, from its projected 3D landmarks."""
  v = t.info.frontal_view
  image = image_io.to_uint8(np.asarray(t.renders[v]))
  uv = np.asarray(project_landmarks(t.landmarks3d, t.cameras[v]))
  extra = {"clip": embedder(image)} if embedder is not None else None
  return face_features.features_from_landmarks(image, uv, extra=extra)


def choose_template(photo, templates: Sequence[Template], weights: Optional[Mapping[str, float]] = None, *,
                    embedder: Optional[Embedder] = None, override: str = ""
                    ) -> tuple[Template, face_features.TemplateChoice]:
  """The template closest to a photo (skin colour, landmark shape and optionally CLIP embeddings).

  Args:
    photo: image path or (H, W, 3) uint8 RGB (analysed with face.detect), or its FaceFeatures.
    templates: T >= 1 templates.
    weights: feature weights (face.features.choose_template; default skin 0.5, shape 0.5); with an
      `embedder`, "clip" defaults to 0.4 next to them.
    embedder: optional f(image uint8) -> (D,) (e.g. `clip_embedder`), applied to the photo and to
      every template's frontal render. Off by default (it needs the encoder weights).
    override: a template name that is chosen regardless of the scores (config override).

  Returns:
    (the chosen Template, the TemplateChoice with every score).
  """
  if not templates:
    raise ValueError("templates: expected at least one template, got none")
  if weights is None:
    weights = dict(face_features.DEFAULT_WEIGHTS, **({"clip": 0.4} if embedder is not None else {}))
  if isinstance(photo, face_features.FaceFeatures):
    pf = photo
  else:
    img = as_rgb_uint8(photo)
    pf = face_features.face_features(img, extra={"clip": embedder(img)} if embedder is not None else None)
  choice = face_features.choose_template(pf, [template_features(t, embedder=embedder) for t in templates],
                                         weights)
  index = choice.index
  if override:
    names = [t.name for t in templates]
    if override not in names:
      raise ValueError(f"template override {override!r} is not one of the templates {names}")
    index = names.index(override)
    choice = dataclasses.replace(choice, index=index)
  return templates[index], choice
