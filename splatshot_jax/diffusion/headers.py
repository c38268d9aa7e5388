"""Tensor names and shapes of a weights file without reading its tensors (for the preflight).

  shapes = tensor_shapes("unet/diffusion_pytorch_model.safetensors")   # {"conv_in.weight": (320, 4, 3, 3), ...}

- `.safetensors`: the JSON header (8-byte length + JSON).
- `.safetensors.index.json` / `.bin.index.json`: the union of the shards' headers.
- `.bin` saved by torch (a zip archive): its `data.pkl` is unpickled with stand-ins for torch's classes (nothing
  of the file is executed and torch is not needed), which gives each tensor's shape and storage; every storage
  must be a member of the archive and hold enough bytes, so a zip with a missing or short member is found here.
- a legacy (non-zip) torch pickle: None (not readable cheaply).
Raises HeaderError with what is wrong.
"""

from __future__ import annotations

import collections
import json
import pickle
import struct
import zipfile
from pathlib import Path

from splatshot_jax import errors

# torch storage classes -> bytes per element.
_STORAGE_BYTES = {"DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
                  "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1}
# torch dtypes by name (newer files pass a dtype to an untyped storage).
_DTYPE_BYTES = {"float64": 8, "double": 8, "float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2,
                "int64": 8, "long": 8, "int32": 4, "int": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1}


class HeaderError(errors.UserError, ValueError):
  """A weights file's header or archive is unreadable or inconsistent."""


def safetensors_shapes(path: Path) -> dict[str, tuple]:
  try:
    with open(path, "rb") as f:
      (n,) = struct.unpack("<Q", f.read(8))
      if n > 100 * 2 ** 20:
        raise HeaderError(f"{path}: header length {n} is not plausible (not safetensors?)")
      header = json.loads(f.read(n))
  except (OSError, struct.error, ValueError, UnicodeDecodeError) as e:
    raise HeaderError(f"{path}: unreadable safetensors header ({e})") from e
  return {k: tuple(v["shape"]) for k, v in header.items()
          if k != "__metadata__" and isinstance(v, dict) and "shape" in v}


class _Stub:
  """Stands in for any class or function the pickle names; calling it gives another stub."""

  def __init__(self, *args, **kwargs):
    del args, kwargs

  def __call__(self, *args, **kwargs):
    return _Stub()

  def __setstate__(self, state):
    del state


class _Tensor:
  def __init__(self, storage, offset, size):
    self.storage, self.offset, self.shape = storage, int(offset or 0), tuple(int(s) for s in size)


def _rebuild_tensor(storage, storage_offset, size, *args, **kwargs):
  del args, kwargs
  return _Tensor(storage, storage_offset, size)


def _rebuild_parameter(data, *args, **kwargs):
  del args, kwargs
  return data


class _Storage:
  def __init__(self, name: str):
    self.name = name


class _Unpickler(pickle.Unpickler):
  """Builds nothing of torch: storages become (key, bytes per element, numel), tensors their shapes."""

  def find_class(self, module, name):
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if module.startswith("torch") and name.startswith("_rebuild_tensor"):
      return _rebuild_tensor
    if module.startswith("torch") and name.startswith("_rebuild_parameter"):
      return _rebuild_parameter
    if module == "torch" and name in _STORAGE_BYTES:
      return _Storage(name)
    if module == "torch" and name in _DTYPE_BYTES:
      return _Storage(name)
    return _Stub

  def persistent_load(self, pid):
    # ('storage', storage type, key, location, numel)
    kind, stype, key, _, numel = pid[:5]
    if kind != "storage":
      raise HeaderError(f"unknown persistent id {kind!r}")
    name = getattr(stype, "name", "")
    return (str(key), _STORAGE_BYTES.get(name) or _DTYPE_BYTES.get(name) or 1, int(numel))


def _flatten(obj, prefix="") -> dict:
  out = {}
  if isinstance(obj, dict):
    for k, v in obj.items():
      out.update(_flatten(v, f"{prefix}{k}."))
  elif isinstance(obj, _Tensor):
    out[prefix[:-1]] = obj
  return out


def torch_zip_shapes(path: Path) -> dict[str, tuple]:
  """{name: shape} of a torch zip checkpoint; HeaderError when data.pkl or a storage member is missing or short."""
  try:
    z = zipfile.ZipFile(path)
  except (OSError, zipfile.BadZipFile) as e:
    raise HeaderError(f"{path}: not a readable zip archive ({e})") from e
  with z:
    names = z.namelist()
    pkl = [n for n in names if n.endswith("data.pkl")]
    if not pkl:
      raise HeaderError(f"{path}: a torch archive needs a data.pkl member; it has {names[:5]}")
    prefix = pkl[0][: -len("data.pkl")]
    try:
      obj = _Unpickler(z.open(pkl[0])).load()
    except HeaderError:
      raise
    except Exception as e:  # any malformed pickle
      raise HeaderError(f"{path}: its data.pkl cannot be read ({type(e).__name__}: {e})") from e
    tensors = _flatten(obj)
    sizes = {i.filename: i.file_size for i in z.infolist()}
  missing, short = set(), set()
  for t in tensors.values():
    key, nbytes, numel = t.storage
    member = f"{prefix}data/{key}"
    if member not in sizes:
      missing.add(member)
    elif sizes[member] < numel * nbytes:
      short.add(member)
  if missing:
    raise HeaderError(f"{path}: the archive lacks {len(missing)} tensor storage member(s), e.g. "
                      f"{sorted(missing)[0]} (an incomplete copy?)")
  if short:
    raise HeaderError(f"{path}: {len(short)} tensor storage member(s) are shorter than their tensors, e.g. "
                      f"{sorted(short)[0]} (truncated?)")
  return {k: t.shape for k, t in tensors.items()}


def tensor_shapes(path: str | Path) -> dict[str, tuple] | None:
  """{tensor name: shape} of a weights file (see the module docstring); None for a legacy torch pickle."""
  path = Path(path)
  if path.name.endswith(".index.json"):
    try:
      shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise HeaderError(f"{path}: not a shard index ({e})") from e
    out: dict = {}
    for s in shards:
      out.update(tensor_shapes(path.parent / s) or {})
    return out
  if path.suffix == ".safetensors":
    return safetensors_shapes(path)
  if zipfile.is_zipfile(path):
    return torch_zip_shapes(path)
  return None
