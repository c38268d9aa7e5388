"""PyTorch (diffusers / transformers) state dicts -> Flax param pytrees.

Our Flax modules name their submodules exactly as the PyTorch modules do, with list members
written `name_<i>` (flax's naming of list attributes). So a torch key maps to a flax path by
one rule: `down_blocks.0.resnets.1.conv1.weight` -> ('down_blocks_0', 'resnets_1', 'conv1',
'kernel'). Leaves are renamed and laid out by what the flax template expects:

  torch Linear  weight (O, I)        -> kernel (I, O)
  torch Conv2d  weight (O, I, H, W)  -> kernel (H, W, I, O)
  torch Norm    weight (C,)          -> scale (C,)
  torch Embedding weight (V, D)      -> embedding (V, D)
  anything else                      -> same name, same layout (e.g. a raw nn.Parameter)

Every flax leaf must be filled and every torch key used (unless explicitly ignored); otherwise a
`CheckpointError` names the first offending key and the expected shape.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from flax import traverse_util

from splatshot_jax import errors


class CheckpointError(errors.UserError, ValueError):
  """A checkpoint does not match the model it is loaded into."""


_INDEX = re.compile(r"^\d+$")


def torch_key_to_flax_path(key: str) -> tuple[str, ...]:
  """'a.0.b.weight' -> ('a_0', 'b', 'weight'): numeric segments join the segment before them."""
  out: list[str] = []
  for seg in key.split("."):
    if _INDEX.match(seg) and out:
      out[-1] = f"{out[-1]}_{seg}"
    else:
      out.append(seg)
  return tuple(out)


def _convert_leaf(path: tuple[str, ...], value: np.ndarray, template: Mapping[tuple[str, ...], Any]):
  """Returns (flax_path, array) for one torch tensor, choosing the layout the template expects."""
  prefix, leaf = path[:-1], path[-1]
  if leaf == "weight":
    if prefix + ("kernel",) in template:
      if value.ndim == 2:
        return prefix + ("kernel",), value.T
      if value.ndim == 4:
        return prefix + ("kernel",), value.transpose(2, 3, 1, 0)
      if value.ndim == 3:  # Conv1d
        return prefix + ("kernel",), value.transpose(2, 1, 0)
      return prefix + ("kernel",), value
    if prefix + ("scale",) in template:
      return prefix + ("scale",), value
    if prefix + ("embedding",) in template:
      return prefix + ("embedding",), value
  return path, value


def torch_to_flax(
    state_dict: Mapping[str, np.ndarray],
    template: Any,
    *,
    name: str = "checkpoint",
    key_map: Callable[[str], str | None] | None = None,
    ignore: Iterable[str] = (),
    dtype: Any = None,
) -> dict:
  """Fills a flax param template from a torch-layout state dict.

  Args:
    state_dict: {torch key: array}; torch tensors are accepted too (converted via numpy).
    template: a flax params pytree (arrays or ShapeDtypeStructs) giving the target names and shapes.
    name: what to call the source in error messages (a file or folder path).
    key_map: optional rename applied to each torch key first; return None to drop a key.
    ignore: regexes of torch keys that are expected to be unused (e.g. buffers like position_ids).
    dtype: cast every leaf to this dtype (defaults to the template's dtype).
  Returns:
    a nested dict of numpy arrays with the template's structure.
  Raises:
    CheckpointError naming the first unexpected key, missing param or shape mismatch.
  """
  flat_template = traverse_util.flatten_dict(template)
  ignore_res = [re.compile(p) for p in ignore]
  out: dict[tuple[str, ...], np.ndarray] = {}
  unexpected: list[str] = []
  for key in sorted(state_dict):
    mapped = key_map(key) if key_map is not None else key
    if mapped is None:
      continue
    value = state_dict[key]
    if hasattr(value, "detach"):  # a torch tensor
      value = value.detach().cpu().float().numpy()
    value = np.asarray(value)
    torch_shape = tuple(value.shape)
    path, value = _convert_leaf(torch_key_to_flax_path(mapped), value, flat_template)
    if path not in flat_template:
      if not any(r.search(key) for r in ignore_res):
        unexpected.append(key)
      continue
    expected = flat_template[path]
    if tuple(expected.shape) != tuple(value.shape):
      raise CheckpointError(
          f"{name}: key '{key}' has shape {torch_shape} (as flax: {tuple(value.shape)}) but the "
          f"model expects {tuple(expected.shape)} at {'/'.join(path)} (check the config.json that "
          f"built the model)."
      )
    out[path] = value.astype(dtype or expected.dtype)
  missing = [p for p in flat_template if p not in out]
  if missing:
    p = missing[0]
    raise CheckpointError(
        f"{name}: no weight for model parameter {'/'.join(p)} (expected shape "
        f"{tuple(flat_template[p].shape)}); {len(missing)} parameter(s) missing in all."
    )
  if unexpected:
    raise CheckpointError(
        f"{name}: key '{unexpected[0]}' does not belong to this model "
        f"({len(unexpected)} unexpected key(s) in all); is it the right checkpoint for this config?"
    )
  return traverse_util.unflatten_dict(out)


def bin_conversion_command(path, python: str = "python") -> str:
  """The one-liner that rewrites a torch `.bin` as `.safetensors` beside it.

  Nested dicts (IP-Adapter's {"image_proj": {...}, "ip_adapter": {...}}) are flattened to dotted keys, the
  layout diffusers uses for IP-Adapter safetensors and the one `read_state_dict` accepts; `.contiguous().clone()`
  gives every tensor its own storage, since safetensors refuses tensors that share memory (tied weights).
  `python`: the interpreter that has torch. The error messages keep "python" (they are shown because this
  process's interpreter has no torch, and the command may run on another machine); tests pass sys.executable.
  """
  src = str(path)
  dst = src[: -len(".bin")] + ".safetensors" if src.endswith(".bin") else src + ".safetensors"
  return (
      f"{python} -c \"import torch, safetensors.torch as st; "
      "f = lambda d, p='': {k2: v2 for k, v in d.items() for k2, v2 in "
      "(f(v, p + k + '.').items() if isinstance(v, dict) else [(p + k, v)])}; "
      f"st.save_file({{k: v.contiguous().clone() for k, v in f(torch.load({src!r}, map_location='cpu', "
      f"weights_only=True)).items()}}, {dst!r})\""
  )
