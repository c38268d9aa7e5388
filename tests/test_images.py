"""Tests for splatshot_jax.io.images: every PIL mode to float RGB, EXIF, atomic writers, errors."""

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from splatshot_jax.io import images as io_img

SHARED = Path(os.environ.get("SPLATSHOT_SHARED",
                             Path(__file__).resolve().parents[1].parent / "shared"))


@pytest.fixture
def rgb():
  return np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)


def test_rgb_png_round_trip(tmp_path, rgb):
  io_img.save_image(tmp_path / "a.png", rgb)
  got = io_img.load_image(tmp_path / "a.png")
  assert got.dtype == np.float32 and got.shape == (6, 5, 3)
  np.testing.assert_array_equal(np.round(got * 255).astype(np.uint8), rgb)
  io_img.save_image(tmp_path / "b.png", got)  # float input rounds back exactly
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "b.png")), rgb)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]


def test_grayscale_and_bilevel(tmp_path, rgb):
  Image.fromarray(rgb[..., 0]).save(tmp_path / "l.png")
  got = io_img.load_image(tmp_path / "l.png")
  np.testing.assert_allclose(got, np.repeat(rgb[..., :1], 3, -1) / 255.0, atol=1e-7)
  Image.fromarray(rgb[..., 0] > 128).save(tmp_path / "1.png")
  got = io_img.load_image(tmp_path / "1.png")
  np.testing.assert_array_equal(got[..., 1], (rgb[..., 0] > 128).astype(np.float32))


def test_rgba_composites_on_background(tmp_path, rgb):
  alpha = np.linspace(0, 255, 30).astype(np.uint8).reshape(6, 5)
  Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "a.png")
  a = alpha[..., None] / 255.0
  for bg in [(1.0, 1.0, 1.0), (0.0, 0.5, 0.0)]:
    got = io_img.load_image(tmp_path / "a.png", background=bg)
    np.testing.assert_allclose(got, rgb / 255.0 * a + np.asarray(bg) * (1 - a), atol=1e-6)
  np.testing.assert_allclose(io_img.load_alpha(tmp_path / "a.png"), alpha / 255.0, atol=1e-7)
  Image.fromarray(np.dstack([rgb[..., 0], alpha])).save(tmp_path / "la.png")  # LA mode
  got = io_img.load_image(tmp_path / "la.png", background=(0, 0, 0))
  np.testing.assert_allclose(got[..., 2], rgb[..., 0] / 255.0 * alpha / 255.0, atol=1e-6)


def test_palette_with_transparency(tmp_path, rgb):
  im = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
  im.info["transparency"] = 0
  im.save(tmp_path / "p.png", transparency=0)
  got = io_img.load_image(tmp_path / "p.png", background=(1, 0, 1))
  idx = np.asarray(Image.open(tmp_path / "p.png"))
  np.testing.assert_allclose(got[idx == 0], np.tile([1.0, 0.0, 1.0], ((idx == 0).sum(), 1)))
  assert got.shape == (6, 5, 3)


def test_cmyk_jpeg(tmp_path):
  Image.new("CMYK", (4, 3), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
  got = io_img.load_image(tmp_path / "c.jpg")
  np.testing.assert_allclose(got.mean((0, 1)), [1.0, 0.0, 0.0], atol=0.05)  # pure red


def test_16bit_grayscale_keeps_precision(tmp_path):
  a = np.array([[0, 1, 257, 65535]], np.uint16)
  Image.fromarray(a).save(tmp_path / "g16.png")
  got = io_img.load_image(tmp_path / "g16.png")
  np.testing.assert_allclose(got[..., 0], a / 65535.0, atol=1e-7)


def test_16bit_rgb_png(tmp_path):
  """48-bit RGB PNG (written by hand: PIL cannot) loads as the 8-bit image PIL decodes."""
  a = np.random.default_rng(1).integers(0, 65536, (3, 4, 3)).astype(np.uint16)
  raw = b"".join(b"\0" + row.astype(">u2").tobytes() for row in a)
  chunk = lambda t, d: (struct.pack(">I", len(d)) + t + d
                        + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF))
  (tmp_path / "c16.png").write_bytes(
      b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 3, 16, 2, 0, 0, 0))
      + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
  got = io_img.load_image(tmp_path / "c16.png")
  np.testing.assert_allclose(got, a / 65535.0, atol=1 / 255.0 + 1e-6)


def test_exif_orientation(tmp_path, rgb):
  im = Image.fromarray(rgb)
  exif = im.getexif()
  exif[0x0112] = 6  # "rotate 90 CW to display"
  im.save(tmp_path / "e.jpg", exif=exif, quality=100)
  got = io_img.load_image(tmp_path / "e.jpg")
  assert got.shape == (5, 6, 3)


def test_errors_name_the_path(tmp_path, rgb):
  with pytest.raises(io_img.ImageError, match=r"missing\.png: no such"):
    io_img.load_image(tmp_path / "missing.png")
  (tmp_path / "junk.png").write_bytes(b"not an image at all")
  with pytest.raises(io_img.ImageError, match=r"junk\.png: unreadable"):
    io_img.load_image(tmp_path / "junk.png")
  Image.fromarray(np.tile(rgb, (40, 40, 1))).save(tmp_path / "t.png")
  data = (tmp_path / "t.png").read_bytes()
  (tmp_path / "t.png").write_bytes(data[:len(data) // 2])
  with pytest.raises(io_img.ImageError, match=r"t\.png: unreadable"):
    io_img.load_image(tmp_path / "t.png")
  with pytest.raises(io_img.ImageError, match=r"x\.png.*shape \(6, 5, 2\)"):
    io_img.save_image(tmp_path / "x.png", np.zeros((6, 5, 2)))


def test_save_grid(tmp_path, rgb):
  ims = [rgb, rgb[:4, :3] / 255.0, np.zeros((6, 5))]
  grid = io_img.save_grid(ims, tmp_path / "g.png", ncols=2, labels=["a", "b", "c"], pad=1)
  assert grid.shape == (2 * (6 + 12) + 3, 2 * 5 + 3, 3)
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "g.png")), grid)
  np.testing.assert_array_equal(grid[1 + 12:1 + 12 + 6, 1:6], rgb)


def test_save_video_mp4_and_gif(tmp_path):
  t = np.linspace(0, 1, 6)[:, None, None, None]
  frames = np.broadcast_to(t, (6, 15, 17, 3)).astype(np.float32)  # odd size: padded for yuv420p
  io_img.save_video(frames, tmp_path / "v.mp4", fps=12)
  got, fps = io_img.load_video(tmp_path / "v.mp4")
  assert got.shape[0] == 6 and got.shape[1:3] == (16, 18) and fps == pytest.approx(12.0)
  np.testing.assert_allclose(got[:, :15, :17].mean((1, 2, 3)), t.ravel(), atol=0.03)
  io_img.save_video(list(frames), tmp_path / "v.gif", fps=10)
  got, fps = io_img.load_video(tmp_path / "v.gif")
  assert got.shape == (6, 15, 17, 3) and fps == pytest.approx(10.0)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["v.gif", "v.mp4"]
  with pytest.raises(io_img.ImageError, match="unsupported video extension"):
    io_img.save_video(frames, tmp_path / "v.avi")


def test_resize_and_pad(rgb):
  a = rgb / 255.0
  np.testing.assert_allclose(io_img.resize_image(a, (10, 12), "nearest")[::2, ::2], a, atol=1e-6)
  padded, padding = io_img.pad_to_multiple(np.zeros((802, 550, 3)), 16)
  assert padded.shape == (816, 560, 3) and padding == (7, 7, 5, 5)


@pytest.mark.skipif(not (SHARED / "data/multiview/nersemble-128-16views").exists(),
                    reason="shared data absent")
def test_nersemble_mask_and_photo():
  root = SHARED / "data/multiview/nersemble-128-16views"
  m = io_img.load_mask(root / "fg_masks/00000_08.png", threshold=0.5)
  im = io_img.load_image(root / "images/00000_08.png")
  assert m.shape == im.shape[:2] == (802, 550)
  assert im[m == 0].mean() > 0.9  # white background outside the mask
