"""Tiny stand-ins for the paper protocol's networks (same input/output layouts, no real weights), for tests and the
install check of `configs/evaluate.py:paper`:

  python tests/tiny_paper_models.py DIR     # DIR/buffalo_l/{det_10g,w600k_r50}.onnx, DIR/fid.onnx,
                                            # DIR/clip_iqa.onnx, DIR/clip_iqa_text.npy, DIR/ffhq/*.png

- SCRFD (9 outputs, strides 8/16/32, 2 anchors): an anchor's score is sigmoid(SHARPNESS * mean of its stride cell
  of the normalised input), so bright regions are "faces" and a dark image has none; every box is BOX_UNITS strides
  from its anchor on each side, and the 5 keypoints sit at KPS_UNITS strides from it;
- ArcFace: tests/tiny_arcface.py (flatten @ random matrix);
- FID network: average pooling of the image and of its detail |x - blur(x)| to a 2 x 2 grid: (N, 24) features;
- CLIP image network: average pooling to a POOL x POOL grid, flattened: (N, 3 * POOL^2) features.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import tiny_arcface

STRIDES = (8, 16, 32)
SHARPNESS = 8.0
BOX_UNITS = (2.0, 2.5, 2.0, 2.5)  # left, top, right, bottom distances in strides
KPS_UNITS = np.array([[-0.8, -0.6], [0.8, -0.6], [0.0, 0.2], [-0.6, 1.0], [0.6, 1.0]], np.float32)
POOL = 4


def build_scrfd(path) -> Path:
  import onnx
  from onnx import TensorProto, helper, numpy_helper

  nodes, inits, outs = [helper.make_node("ReduceMean", ["input.1"], ["gray"], axes=[1], keepdims=1)], [], {}
  inits += [numpy_helper.from_array(np.asarray([1, -1, 1], np.int64), "shape_a1"),
            numpy_helper.from_array(np.float32(SHARPNESS), "sharp"),
            numpy_helper.from_array(np.zeros((1, 1, 4), np.float32), "zeros4"),
            numpy_helper.from_array(np.zeros((1, 1, 10), np.float32), "zeros10"),
            numpy_helper.from_array(np.asarray(BOX_UNITS, np.float32).reshape(1, 1, 4), "box"),
            numpy_helper.from_array(KPS_UNITS.reshape(1, 1, 10), "kps")]
  for s in STRIDES:
    nodes += [helper.make_node("AveragePool", ["gray"], [f"pool{s}"], kernel_shape=[s, s], strides=[s, s]),
              helper.make_node("Mul", [f"pool{s}", "sharp"], [f"logit{s}"]),
              helper.make_node("Sigmoid", [f"logit{s}"], [f"sig{s}"]),
              helper.make_node("Reshape", [f"sig{s}", "shape_a1"], [f"flat{s}"]),  # (1, h*w, 1)
              helper.make_node("Concat", [f"flat{s}", f"flat{s}"], [f"pair{s}"], axis=2),  # anchors adjacent
              helper.make_node("Reshape", [f"pair{s}", "shape_a1"], [f"score_{s}"]),  # (1, 2hw, 1)
              helper.make_node("Mul", [f"score_{s}", "zeros4"], [f"z4_{s}"]),
              helper.make_node("Add", [f"z4_{s}", "box"], [f"bbox_{s}"]),
              helper.make_node("Mul", [f"score_{s}", "zeros10"], [f"z10_{s}"]),
              helper.make_node("Add", [f"z10_{s}", "kps"], [f"kps_{s}"])]
  for kind, c in (("score", 1), ("bbox", 4), ("kps", 10)):
    for s in STRIDES:
      outs[f"{kind}_{s}"] = helper.make_tensor_value_info(f"{kind}_{s}", TensorProto.FLOAT, [1, None, c])
  graph = helper.make_graph(nodes, "tiny_scrfd",
                            [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, None, None])],
                            list(outs.values()), initializer=inits)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
  model.ir_version = 8
  onnx.checker.check_model(model)
  onnx.save(model, str(path))
  return Path(path)


def build_pooled(path, size: int, grid: int = POOL, contrast: bool = False) -> Path:
  """(N, 3, size, size) -> (N, 3 * grid^2) features: average pooling to a grid x grid, flattened; with `contrast`
  also the pooled |x - 3x3 box blur of x| (N, 6 * grid^2), so that blur moves the features (the FID stand-in)."""
  import onnx
  from onnx import TensorProto, helper

  k = size // grid
  nodes = [helper.make_node("AveragePool", ["x"], ["p"], kernel_shape=[k, k], strides=[k, k]),
           helper.make_node("Flatten", ["p"], ["mean"], axis=1)]
  dim = 3 * grid * grid
  if contrast:
    nodes += [helper.make_node("AveragePool", ["x"], ["blur"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                               count_include_pad=0),
              helper.make_node("Sub", ["x", "blur"], ["hi"]), helper.make_node("Abs", ["hi"], ["ahi"]),
              helper.make_node("AveragePool", ["ahi"], ["pc"], kernel_shape=[k, k], strides=[k, k]),
              helper.make_node("Flatten", ["pc"], ["detail"], axis=1),
              helper.make_node("Concat", ["mean", "detail"], ["features"], axis=1)]
    dim *= 2
  else:
    nodes.append(helper.make_node("Identity", ["mean"], ["features"]))
  graph = helper.make_graph(nodes, "tiny_pooled",
                            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
                            [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", dim])])
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
  model.ir_version = 8
  onnx.checker.check_model(model)
  onnx.save(model, str(path))
  return Path(path)


def build_all(folder, ffhq_images: int = 12) -> dict:
  """Every file of the paper protocol in `folder`; returns the config overrides that use them."""
  from PIL import Image

  folder = Path(folder)
  (folder / "buffalo_l").mkdir(parents=True, exist_ok=True)
  build_scrfd(folder / "buffalo_l" / "det_10g.onnx")
  tiny_arcface.build(folder / "buffalo_l" / "w600k_r50.onnx")
  build_pooled(folder / "fid.onnx", 299, grid=2, contrast=True)
  build_pooled(folder / "clip_iqa.onnx", 224)
  np.save(folder / "clip_iqa_text.npy", np.random.default_rng(0).standard_normal((2, 3 * POOL * POOL)))
  (folder / "ffhq").mkdir(exist_ok=True)
  rng = np.random.default_rng(1)
  for i in range(ffhq_images):
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "ffhq" / f"{i:05d}.png")
  return {"insightface": str(folder), "fid_weights": str(folder / "fid.onnx"), "ffhq": str(folder / "ffhq"),
          "clip_iqa": str(folder / "clip_iqa.onnx"), "clip_iqa_text": str(folder / "clip_iqa_text.npy")}


if __name__ == "__main__":
  overrides = build_all(sys.argv[1] if len(sys.argv) > 1 else "tiny_paper_models")
  print(" ".join(f"--config.{k}={v}" for k, v in overrides.items()))
