"""PLY headers with LF, CRLF (some Windows tools write them) and mixed line endings read identically.

The binary body starts right after the end_header line's own line ending; its first bytes are made "\\r\\n" on
purpose (the first float's little-endian bytes), so a reader that strips whitespace after the header, or takes
a CRLF header's "\\r" as data, reads every value shifted.
"""

import struct

import jax.numpy as jnp
import numpy as np
import pytest

from splatshot_jax.gaussians import Gaussians
from splatshot_jax.io import ply


def _endings(header_lines, style):
  """header lines (no endings) -> bytes with `style` line endings ("lf", "crlf", "mixed")."""
  if style == "lf":
    ends = ["\n"] * len(header_lines)
  elif style == "crlf":
    ends = ["\r\n"] * len(header_lines)
  else:  # alternate, starting with CRLF, and end_header with trailing blanks
    ends = ["\r\n" if i % 2 == 0 else "\n" for i in range(len(header_lines))]
  lines = list(header_lines)
  if style == "mixed":
    lines[-1] = lines[-1] + " \t"
  return "".join(l + e for l, e in zip(lines, ends)).encode("ascii")


def _gaussians(n=7, seed=0):
  rng = np.random.default_rng(seed)
  means = rng.normal(size=(n, 3)).astype(np.float32)
  means[0, 0] = struct.unpack("<f", b"\r\n\x20\x41")[0]  # the body's first two bytes are CR LF
  f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  return Gaussians(means=jnp.asarray(means), log_scales=f(n, 3), quats=f(n, 4), opacity_logits=f(n),
                   sh=f(n, 4, 3))


@pytest.mark.parametrize("style", ["crlf", "mixed"])
def test_binary_gaussians_header_line_endings(tmp_path, style):
  g = _gaussians()
  lf = tmp_path / "lf.ply"
  ply.write_gaussians(lf, g)
  data = lf.read_bytes()
  cut = data.index(b"end_header\n") + len(b"end_header\n")
  header, body = data[:cut].decode("ascii").split("\n")[:-1], data[cut:]
  assert body[:2] == b"\r\n"
  header.insert(2, "comment written by a tool with its own line endings")
  other = tmp_path / f"{style}.ply"
  other.write_bytes(_endings(header, style) + body)
  want, got = ply.read_gaussians(lf), ply.read_gaussians(other)
  for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
    np.testing.assert_array_equal(np.asarray(getattr(got, name)), np.asarray(getattr(want, name)), err_msg=name)
    np.testing.assert_array_equal(np.asarray(getattr(got, name)), np.asarray(getattr(g, name)), err_msg=name)


@pytest.mark.parametrize("style", ["lf", "crlf", "mixed"])
def test_ascii_points_header_and_body_line_endings(tmp_path, style):
  pts = np.array([[0.5, -1.25, 2.0], [3.0, 4.5, -6.0], [1e-3, 2e3, -7.5]], np.float32)
  rgb = np.array([[255, 0, 10], [1, 128, 254], [7, 8, 9]], np.uint8)
  header = ["ply", "format ascii 1.0", "comment made by hand", "element vertex 3", "property float x",
            "property float y", "property float z", "property uchar red", "property uchar green",
            "property uchar blue", "end_header"]
  rows = [" ".join(f"{v:g}" for v in p) + " " + " ".join(str(int(c)) for c in cl) for p, cl in zip(pts, rgb)]
  path = tmp_path / f"{style}.ply"
  path.write_bytes(_endings(header, style) + _endings(rows, style))
  got_pts, got_rgb = ply.read_points(path)
  np.testing.assert_array_equal(got_pts, pts)
  np.testing.assert_array_equal(np.round(got_rgb * 255).astype(np.uint8), rgb)
