"""PLY files: 3DGS Gaussians (the layout of Kerbl et al. 2023, read by SuperSplat and most viewers)
and plain point clouds (`points3d.ply`).

3DGS layout, one binary little-endian `vertex` element, all float32, in this order:
  x y z  nx ny nz (zeros)  f_dc_0..2  f_rest_0..3(K-1)-1  opacity  scale_0..2  rot_0..3
Values are the raw optimiser parameters: opacity is a logit, scales are logs of standard
deviations, rot is the (w, x, y, z) quaternion unnormalised. f_rest is channel-major, i.e. the
(K-1, 3) coefficients transposed to (3, K-1) and flattened, as `GaussianModel.save_ply` does.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from splatshot_jax import errors
from splatshot_jax.gaussians import Gaussians
from splatshot_jax.io.atomic import atomic_path


class PlyError(errors.UserError, ValueError):
  """A PLY file is malformed, truncated or lacks a property we need."""


_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}


@dataclasses.dataclass
class _Element:
  name: str
  count: int
  # (name, dtype) for scalars, (name, count_dtype, item_dtype) for lists.
  props: list[tuple] = dataclasses.field(default_factory=list)

  @property
  def has_lists(self) -> bool:
    return any(len(p) == 3 for p in self.props)


def _parse_header(data: bytes, path: Path) -> tuple[str, list[_Element], int]:
  """Returns (format, elements, offset of the body in `data`)."""
  if not data.startswith(b"ply"):
    raise PlyError(f"{path}: not a PLY file (first line must be 'ply', got {data[:16]!r})")
  m = re.search(rb"end_header[ \t]*\r?\n", data)
  if m is None:
    raise PlyError(f"{path}: header has no 'end_header' line")
  try:
    lines = data[:m.start()].decode("ascii").splitlines()
  except UnicodeDecodeError as e:
    raise PlyError(f"{path}: header is not ASCII ({e})") from None
  fmt = None
  elements: list[_Element] = []
  for lineno, line in enumerate(lines[1:], start=2):
    tok = line.split()
    if not tok or tok[0] in ("comment", "obj_info"):
      continue
    where = f"{path}: header line {lineno} {line!r}"
    if tok[0] == "format":
      if len(tok) != 3 or tok[1] not in _FORMATS or tok[2] != "1.0":
        raise PlyError(f"{where}: expected 'format ascii|binary_little_endian|binary_big_endian 1.0'")
      fmt = tok[1]
    elif tok[0] == "element":
      if len(tok) != 3 or not tok[2].isdigit():
        raise PlyError(f"{where}: expected 'element <name> <count>'")
      elements.append(_Element(tok[1], int(tok[2])))
    elif tok[0] == "property":
      if not elements:
        raise PlyError(f"{where}: property before any element")
      if len(tok) == 3 and tok[1] in _TYPES:
        elements[-1].props.append((tok[2], _TYPES[tok[1]]))
      elif len(tok) == 5 and tok[1] == "list" and tok[2] in _TYPES and tok[3] in _TYPES:
        elements[-1].props.append((tok[4], _TYPES[tok[2]], _TYPES[tok[3]]))
      else:
        raise PlyError(f"{where}: expected 'property <type> <name>' or "
                       f"'property list <type> <type> <name>' with type in {sorted(_TYPES)}")
    else:
      raise PlyError(f"{where}: unknown header keyword {tok[0]!r}")
  if fmt is None:
    raise PlyError(f"{path}: header has no 'format' line")
  return fmt, elements, m.end()


def _read_binary(body: bytes, elements: list[_Element], endian: str, path: Path) -> dict:
  out, pos = {}, 0
  for el in elements:
    if not el.has_lists:
      dt = np.dtype([(n, endian + t) for n, t in el.props])
      need = dt.itemsize * el.count
      if len(body) - pos < need:
        raise PlyError(f"{path}: truncated: element '{el.name}' needs {need} bytes "
                       f"({el.count} x {dt.itemsize}), only {len(body) - pos} left")
      arr = np.frombuffer(body, dt, count=el.count, offset=pos)
      out[el.name] = {n: arr[n].astype(arr[n].dtype.newbyteorder("=")) for n, _ in el.props}
      pos += need
      continue
    # Lists make rows variable-length: walk them one by one (only faces/edges use them).
    cols = {p[0]: [] for p in el.props}
    try:
      for _ in range(el.count):
        for p in el.props:
          if len(p) == 2:
            dt = np.dtype(endian + p[1])
            cols[p[0]].append(np.frombuffer(body, dt, 1, pos)[0])
            pos += dt.itemsize
          else:
            cdt, idt = np.dtype(endian + p[1]), np.dtype(endian + p[2])
            c = int(np.frombuffer(body, cdt, 1, pos)[0])
            pos += cdt.itemsize
            cols[p[0]].append(np.frombuffer(body, idt, c, pos).copy())
            pos += idt.itemsize * c
    except ValueError:
      raise PlyError(f"{path}: truncated inside element '{el.name}'") from None
    out[el.name] = {n: (np.array(v) if len(el.props[i]) == 2 else v)
                    for i, (n, v) in enumerate(cols.items())}
  return out


def _read_ascii(body: bytes, elements: list[_Element], path: Path) -> dict:
  tokens = body.split()
  out, pos = {}, 0
  for el in elements:
    if not el.has_lists:
      need = el.count * len(el.props)
      if len(tokens) - pos < need:
        raise PlyError(f"{path}: truncated: element '{el.name}' needs {el.count} rows of "
                       f"{len(el.props)} values, found {len(tokens) - pos} values")
      try:
        vals = np.array(tokens[pos:pos + need], np.float64).reshape(el.count, len(el.props))
      except ValueError as e:
        raise PlyError(f"{path}: element '{el.name}': non-numeric value ({e})") from None
      out[el.name] = {n: vals[:, i].astype(t) for i, (n, t) in enumerate(el.props)}
      pos += need
      continue
    cols = {p[0]: [] for p in el.props}
    try:
      for _ in range(el.count):
        for p in el.props:
          if len(p) == 2:
            cols[p[0]].append(float(tokens[pos]))
            pos += 1
          else:
            c = int(tokens[pos])
            cols[p[0]].append(np.array(tokens[pos + 1:pos + 1 + c], np.float64).astype(p[2]))
            if len(cols[p[0]][-1]) != c:
              raise IndexError
            pos += 1 + c
    except (IndexError, ValueError):
      raise PlyError(f"{path}: truncated or malformed element '{el.name}'") from None
    out[el.name] = {n: (np.array(v, el.props[i][1]) if len(el.props[i]) == 2 else v)
                    for i, (n, v) in enumerate(cols.items())}
  return out


def read_ply(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
  """Reads any ascii / binary PLY.

  Args:
    path: the .ply file.

  Returns:
    {element name: {property name: (count,) array in the file's dtype}}; list properties are
    python lists of arrays.

  Raises:
    PlyError: naming the file and the problem (bad header, truncated body, bad values).
  """
  path = Path(path)
  try:
    data = path.read_bytes()
  except OSError as e:
    raise PlyError(f"{path}: cannot read ({e.strerror})") from None
  fmt, elements, start = _parse_header(data, path)
  body = data[start:]
  if fmt == "ascii":
    return _read_ascii(body, elements, path)
  return _read_binary(body, elements, _FORMATS[fmt], path)


def _vertex(path: Path, required: list[str]) -> dict[str, np.ndarray]:
  elements = read_ply(path)
  if "vertex" not in elements:
    raise PlyError(f"{path}: no 'vertex' element (found {sorted(elements)})")
  v = elements["vertex"]
  missing = [n for n in required if n not in v]
  if missing:
    raise PlyError(f"{path}: vertex element lacks properties {missing} (has {list(v)})")
  return v


def check_vertices(path: Path, v: dict[str, np.ndarray], names: list[str], what: str) -> None:
  """Raises PlyError when the vertex element is empty or any of `names` holds NaN/inf.

  A NaN that gets into a fit or a render propagates silently to every output (and an empty element
  fails deep inside JAX), so both are rejected where the file is read, naming each property and count.
  """
  num = len(v[names[0]])
  if num == 0:
    raise PlyError(f"{path}: the vertex element has 0 rows; expected at least one {what}")
  bad = {n: int((~np.isfinite(v[n].astype(np.float64))).sum()) for n in names if v[n].dtype.kind == "f"}
  bad = {n: c for n, c in bad.items() if c}
  if bad:
    rows = np.zeros(num, bool)
    for n in bad:
      rows |= ~np.isfinite(v[n].astype(np.float64))
    listed = ", ".join(f"{n}: {c}" for n, c in bad.items())
    raise PlyError(f"{path}: {int(rows.sum())} of {num} {what}s have non-finite (NaN/inf) values ({listed}); "
                   "expected finite numbers")


def _to_unit(c: np.ndarray) -> np.ndarray:
  if c.dtype.kind in "ui":
    return c.astype(np.float32) / float(np.iinfo(c.dtype).max)
  return c.astype(np.float32)


def read_points(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
  """Reads a point cloud PLY (x y z [nx ny nz] [red green blue]).

  Args:
    path: ascii or binary PLY with a `vertex` element.

  Returns:
    points: (N, 3) float32.
    colors: (N, 3) float32 in [0, 1] (integer colours divided by their type's max), or None when
      the file has no red/green/blue (or r/g/b) properties.
  """
  path = Path(path)
  v = _vertex(path, ["x", "y", "z"])
  check_vertices(path, v, [n for n in v if isinstance(v[n], np.ndarray)], "point")
  pts = np.stack([v["x"], v["y"], v["z"]], -1).astype(np.float32)
  for names in (("red", "green", "blue"), ("r", "g", "b"),
                ("diffuse_red", "diffuse_green", "diffuse_blue")):
    if all(n in v for n in names):
      return pts, np.stack([_to_unit(v[n]) for n in names], -1)
  return pts, None


def _write(path: Path, columns: list[tuple[str, np.ndarray]], n: int) -> None:
  dt = np.dtype([(name, "<" + np.dtype(a.dtype).str[1:]) for name, a in columns])
  rows = np.empty(n, dt)
  for name, a in columns:
    rows[name] = a
  inv = {v: k for k, v in _TYPES.items() if not k[-1].isdigit()}
  header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
  header += [f"property {inv[np.dtype(a.dtype).str[1:]]} {name}" for name, a in columns]
  header.append("end_header\n")
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      f.write("\n".join(header).encode("ascii"))
      f.write(rows.tobytes())


def write_points(path: str | os.PathLike, points, colors=None, normals=None) -> None:
  """Writes a binary little-endian point cloud PLY, atomically.

  Args:
    path: destination .ply.
    points: (N, 3) float, stored as float32 x y z.
    colors: optional (N, 3), uint8 or float in [0, 1]; stored as uchar red green blue.
    normals: optional (N, 3) float, stored as float32 nx ny nz.
  """
  pts = np.asarray(points, np.float32)
  n = pts.shape[0]
  cols = [(c, pts[:, i]) for i, c in enumerate("xyz")]
  if normals is not None:
    nrm = np.asarray(normals, np.float32)
    cols += [(c, nrm[:, i]) for i, c in enumerate(("nx", "ny", "nz"))]
  if colors is not None:
    c = np.asarray(colors)
    if c.dtype != np.uint8:
      c = np.clip(np.round(c.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    cols += [(name, c[:, i]) for i, name in enumerate(("red", "green", "blue"))]
  _write(Path(path), cols, n)


def write_gaussians(path: str | os.PathLike, g: Gaussians) -> None:
  """Writes Gaussians in the 3DGS PLY layout (module docstring), atomically.

  Args:
    path: destination .ply.
    g: Gaussians with means (N, 3), log_scales (N, 3), quats (N, 4) wxyz, opacity_logits (N,),
      sh (N, K, 3).
  """
  means = np.asarray(g.means, np.float32)
  n = means.shape[0]
  sh = np.asarray(g.sh, np.float32)
  rest = sh[:, 1:, :].transpose(0, 2, 1).reshape(n, -1)  # channel-major, as 3DGS
  f32 = lambda a: np.asarray(a, np.float32)
  cols = [(c, means[:, i]) for i, c in enumerate("xyz")]
  cols += [(c, np.zeros(n, np.float32)) for c in ("nx", "ny", "nz")]
  cols += [(f"f_dc_{i}", sh[:, 0, i]) for i in range(3)]
  cols += [(f"f_rest_{i}", rest[:, i]) for i in range(rest.shape[1])]
  cols += [("opacity", f32(g.opacity_logits).reshape(n))]
  cols += [(f"scale_{i}", f32(g.log_scales)[:, i]) for i in range(3)]
  cols += [(f"rot_{i}", f32(g.quats)[:, i]) for i in range(4)]
  _write(Path(path), cols, n)


def read_gaussians(path: str | os.PathLike) -> Gaussians:
  """Reads a 3DGS PLY (as written by `write_gaussians`, the 3DGS code or SuperSplat).

  Args:
    path: .ply with x y z f_dc_0..2 [f_rest_*] opacity scale_0..2 rot_0..3.

  Returns:
    Gaussians, float32, sh (N, K, 3) with K = 1 + len(f_rest) / 3.

  Raises:
    PlyError: malformed file, missing properties, no vertices, or NaN/inf values (counted per property).
  """
  path = Path(path)
  names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
  names += [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)]
  v = _vertex(path, names)
  rest_names = sorted((p for p in v if p.startswith("f_rest_")), key=lambda s: int(s[7:]))
  n_rest = len(rest_names)
  k = 1 + n_rest // 3
  if n_rest % 3 or round(k ** 0.5) ** 2 != k or rest_names != [f"f_rest_{i}" for i in range(n_rest)]:
    raise PlyError(f"{path}: expected f_rest_0..f_rest_{{3*((d+1)^2-1)-1}} for an SH degree d, "
                   f"found {n_rest} f_rest properties")
  check_vertices(path, v, names + rest_names, "Gaussian")
  col = lambda names: np.stack([v[c].astype(np.float32) for c in names], -1)
  num = len(v["x"])
  dc = col(["f_dc_0", "f_dc_1", "f_dc_2"])[:, None, :]
  rest = (col(rest_names) if n_rest else np.zeros((num, 0), np.float32))
  rest = rest.reshape(num, 3, k - 1).transpose(0, 2, 1)
  return Gaussians(
      means=jnp.asarray(col(["x", "y", "z"])),
      log_scales=jnp.asarray(col([f"scale_{i}" for i in range(3)])),
      quats=jnp.asarray(col([f"rot_{i}" for i in range(4)])),
      opacity_logits=jnp.asarray(v["opacity"].astype(np.float32)),
      sh=jnp.asarray(np.concatenate([dc, rest], axis=1)),
  )
