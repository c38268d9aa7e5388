"""A tiny stand-in for insightface's ArcFace ONNX model (same input/output contract, random weights).

  path = tiny_arcface.build(tmp_path / "arcface.onnx")   # input "input.1" (N, 3, 112, 112) -> (N, DIM)
  W = tiny_arcface.weights()                             # (3 * 112 * 112, DIM) float32: output = flatten(x) @ W
"""

from pathlib import Path

import numpy as np

DIM = 8
SIZE = 112


def weights(seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal((3 * SIZE * SIZE, DIM)).astype(np.float32)


def build(path, seed: int = 0) -> Path:
  import onnx
  from onnx import TensorProto, helper, numpy_helper

  w = numpy_helper.from_array(weights(seed), name="W")
  graph = helper.make_graph(
      [helper.make_node("Flatten", ["input.1"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "W"], ["683"])],
      "tiny_arcface",
      [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
      [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["N", DIM])],
      initializer=[w])
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
  model.ir_version = 8  # readable by older onnxruntime builds too
  onnx.checker.check_model(model)
  onnx.save(model, str(path))
  return Path(path)
