"""Images and videos: load any photo as float RGB, save PNGs, grids and turntables atomically.

Arrays are float32 (H, W, 3) in [0, 1] (uint8 is accepted wherever an image is written).
Pixel values stay in the file's (sRGB) encoding; nothing here linearises colours.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from splatshot_jax import errors
from splatshot_jax.io.atomic import atomic_path


class ImageError(errors.UserError, ValueError):
  """An image or video file cannot be read, or an array cannot be written as one."""


def _open(path: Path) -> Image.Image:
  if not path.is_file():
    raise ImageError(f"{path}: no such image file")
  try:
    im = Image.open(path)
    im.load()  # decode now, so truncated files fail here with the path in the message
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    raise ImageError(f"{path}: unreadable image ({e})") from None
  # Phone photos store rotation in EXIF; the pixels are what a viewer shows after transposing.
  return ImageOps.exif_transpose(im)


def _to_float(im: Image.Image, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
  """PIL image of any mode -> (H, W, 3) float32 colour, (H, W) float32 alpha or None."""
  mode = im.mode
  if mode.startswith("I;16") or mode in ("I", "F"):
    # 16-bit / 32-bit grayscale: keep the precision PIL's "RGB" conversion would throw away.
    a = np.asarray(im).astype(np.float32)
    a = a if mode == "F" else a / 65535.0
    g = np.clip(a, 0.0, 1.0)
    return np.repeat(g[..., None], 3, axis=-1), None
  if mode == "P":
    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
  elif mode == "PA":
    im = im.convert("RGBA")
  has_alpha = im.mode in ("RGBA", "LA", "RGBa", "La") or (
      im.mode == "RGB" and "transparency" in im.info)
  if has_alpha:
    rgba = np.asarray(im.convert("RGBA"), np.float32) / 255.0
    return rgba[..., :3], rgba[..., 3]
  try:
    # Covers 1, L, RGB, CMYK, YCbCr, LAB, HSV; 16-bit RGB PNGs arrive as 8-bit (PIL limitation).
    return np.asarray(im.convert("RGB"), np.float32) / 255.0, None
  except (ValueError, OSError) as e:
    raise ImageError(f"{path}: cannot convert mode {mode!r} to RGB ({e})") from None


def load_image(path: str | os.PathLike, *, background=(1.0, 1.0, 1.0)) -> np.ndarray:
  """Loads an image file as RGB.

  EXIF orientation is applied; grayscale, palette, CMYK, YCbCr and 16-bit grayscale are
  converted; images with alpha are composited over `background`: rgb * a + bg * (1 - a).

  Args:
    path: image file (anything PIL reads).
    background: (3,) RGB in [0, 1] behind transparent pixels (white, like NeRSemble photos).

  Returns:
    (H, W, 3) float32 in [0, 1].

  Raises:
    ImageError: missing, unidentified, truncated or unconvertible file, naming the path.
  """
  path = Path(path)
  with _open(path) as im:
    rgb, alpha = _to_float(im, path)
  if alpha is not None:
    bg = np.asarray(background, np.float32).reshape(1, 1, 3)
    rgb = rgb * alpha[..., None] + bg * (1.0 - alpha[..., None])
  return np.ascontiguousarray(rgb, np.float32)


def load_alpha(path: str | os.PathLike) -> np.ndarray:
  """(H, W) float32 alpha in [0, 1] of an image file (ones when it has no alpha channel)."""
  path = Path(path)
  with _open(path) as im:
    rgb, alpha = _to_float(im, path)
  return np.ones(rgb.shape[:2], np.float32) if alpha is None else alpha.astype(np.float32)


def load_mask(path: str | os.PathLike, threshold: float | None = None) -> np.ndarray:
  """A mask image as (H, W) float32 in [0, 1]: its alpha if it has one, else its luminance.

  Args:
    path: mask file (e.g. NeRSemble fg_masks/*.png, mode L).
    threshold: if given, returns 1.0 where the mask exceeds it and 0.0 elsewhere.
  """
  path = Path(path)
  with _open(path) as im:
    rgb, alpha = _to_float(im, path)
  m = alpha if alpha is not None else rgb @ np.asarray([0.299, 0.587, 0.114], np.float32)
  return (m > threshold).astype(np.float32) if threshold is not None else m.astype(np.float32)


def to_uint8(image) -> np.ndarray:
  """Float in [0, 1] (clipped, rounded) or uint8 array -> uint8 of the same shape."""
  a = np.asarray(image)
  if a.dtype == np.uint8:
    return a
  if a.dtype == bool:
    return a.astype(np.uint8) * 255
  return np.round(np.clip(np.nan_to_num(a.astype(np.float32)), 0.0, 1.0) * 255.0).astype(np.uint8)


def _as_hwc(image, name: str) -> np.ndarray:
  a = to_uint8(image)
  if a.ndim == 3 and a.shape[-1] == 1:
    a = a[..., 0]
  if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))):
    raise ImageError(f"{name}: expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image, "
                     f"got shape {a.shape}")
  return a


def save_image(path: str | os.PathLike, image) -> None:
  """Writes an image atomically; the format follows the extension (.png, .jpg, ...).

  Args:
    path: destination.
    image: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); float in [0, 1] or uint8.
  """
  path = Path(path)
  a = _as_hwc(image, str(path))
  with atomic_path(path) as tmp:
    Image.fromarray(a).save(tmp)


def resize_image(image, size: tuple[int, int], resample: str = "bicubic") -> np.ndarray:
  """Resizes a float image to size = (width, height), matching `cameras.resize`.

  PIL samples at pixel centres (integer + 0.5), the convention of `Camera.K`. Each channel is
  resized in float ('F' mode), so no 8-bit rounding happens.

  Args:
    image: (H, W, C) or (H, W) float.
    size: (width, height).
    resample: 'nearest', 'bilinear', 'bicubic', 'lanczos' or 'box' (area average).

  Returns:
    (height, width[, C]) float32 (bicubic/lanczos may overshoot [0, 1] slightly).
  """
  filt = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
          "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
          "box": Image.Resampling.BOX}[resample]
  a = np.asarray(image, np.float32)
  chans = a[..., None] if a.ndim == 2 else a
  out = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(chans[..., c]), "F")
                             .resize((int(size[0]), int(size[1])), filt))
                  for c in range(chans.shape[-1])], -1)
  return out[..., 0] if a.ndim == 2 else out


def pad_to_multiple(image, multiple: int = 16, mode: str = "symmetric"
                    ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
  """Centred padding of (H, W, ...) to multiples of `multiple`, as SplatShot pads its views.

  mode 'symmetric' is OpenCV's BORDER_REFLECT (edge pixel repeated), the padding of the
  SplatShot view folders. Returns the padded array and (top, bottom, left, right); pair with
  `cameras.pad(camera, *padding)`.
  """
  a = np.asarray(image)
  h, w = a.shape[:2]
  ph, pw = -h % multiple, -w % multiple
  padding = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
  widths = [(padding[0], padding[1]), (padding[2], padding[3])] + [(0, 0)] * (a.ndim - 2)
  return np.pad(a, widths, mode=mode), padding


def make_grid(images: Sequence, ncols: int | None = None, labels: Sequence[str] | None = None,
              *, pad: int = 2, background: float = 1.0) -> np.ndarray:
  """Tiles images into a grid (smaller images are centred in a cell of the largest size).

  Args:
    images: V images (H_i, W_i[, C]) float in [0, 1] or uint8.
    ncols: images per row; default ceil(sqrt(V)).
    labels: optional V strings drawn above each cell.
    pad: pixels between cells.
    background: grey level of padding and empty cells.

  Returns:
    (H_grid, W_grid, 3) uint8.
  """
  tiles = []
  for i, im in enumerate(images):
    a = _as_hwc(im, f"make_grid: images[{i}]")
    a = np.repeat(a[..., None], 3, -1) if a.ndim == 2 else a[..., :3]
    tiles.append(a)
  if not tiles:
    raise ImageError("make_grid: no images")
  if labels is not None and len(labels) != len(tiles):
    raise ImageError(f"make_grid: {len(labels)} labels for {len(tiles)} images")
  ncols = ncols or math.ceil(math.sqrt(len(tiles)))
  nrows = math.ceil(len(tiles) / ncols)
  th = max(t.shape[0] for t in tiles)
  tw = max(t.shape[1] for t in tiles)
  lh = 12 if labels is not None else 0  # PIL's default bitmap font is ~11 px tall
  ch, cw = th + lh, tw
  bg = int(round(255 * background))
  grid = np.full((nrows * ch + (nrows + 1) * pad, ncols * cw + (ncols + 1) * pad, 3), bg, np.uint8)
  for i, t in enumerate(tiles):
    r, c = divmod(i, ncols)
    y = pad + r * (ch + pad) + lh + (th - t.shape[0]) // 2
    x = pad + c * (cw + pad) + (tw - t.shape[1]) // 2
    grid[y:y + t.shape[0], x:x + t.shape[1]] = t
  if labels is not None:
    pil = Image.fromarray(grid)
    draw = ImageDraw.Draw(pil)
    ink = (0, 0, 0) if background > 0.5 else (255, 255, 255)
    for i, text in enumerate(labels):
      r, c = divmod(i, ncols)
      draw.text((pad + c * (cw + pad) + 1, pad + r * (ch + pad)), str(text), fill=ink)
    grid = np.asarray(pil)
  return grid


def save_grid(images: Sequence, path: str | os.PathLike, ncols: int | None = None,
              labels: Sequence[str] | None = None, **kwargs) -> np.ndarray:
  """`make_grid` then `save_image` (atomic). Returns the (H, W, 3) uint8 grid."""
  grid = make_grid(images, ncols, labels, **kwargs)
  save_image(path, grid)
  return grid


def save_video(frames, path: str | os.PathLike, fps: float = 24.0) -> None:
  """Writes frames as .mp4 (H.264, imageio-ffmpeg's ffmpeg binary: `_ffmpeg`) or .gif, atomically.

  Args:
    frames: (T, H, W, 3) or a sequence of (H, W, 3) frames, float in [0, 1] or uint8.
    path: destination; the extension picks the format (.mp4, .gif).
    fps: frames per second.
  """
  path = Path(path)
  frames = list(frames)
  if not frames:
    raise ImageError(f"{path}: no frames to write")
  arr = np.stack([_as_hwc(f, f"{path}: frame {i}") for i, f in enumerate(frames)])
  if arr.ndim == 3:
    arr = np.repeat(arr[..., None], 3, -1)
  arr = np.ascontiguousarray(arr[..., :3])
  ext = path.suffix.lower()
  with atomic_path(path) as tmp:
    if ext == ".gif":
      pil = [Image.fromarray(f) for f in arr]
      pil[0].save(tmp, save_all=True, append_images=pil[1:], duration=int(round(1000 / fps)),
                  loop=0, optimize=False)
    elif ext in (".mp4", ".mov", ".mkv"):
      # yuv420p (the pixel format every player accepts) needs even sizes: pad by the edge.
      t, h, w, _ = arr.shape
      arr = np.pad(arr, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
      # crf 10: imageio-ffmpeg's quality=8 for libx264, what these videos were written with before.
      _ffmpeg(["-f", "rawvideo", "-vcodec", "rawvideo", "-s", f"{arr.shape[2]}x{arr.shape[1]}", "-pix_fmt", "rgb24",
               "-r", str(Fraction(fps).limit_denominator()), "-i", "-", "-an", "-vcodec", "libx264",
               "-pix_fmt", "yuv420p", "-crf", "10", "-f", ext[1:].replace("mkv", "matroska"), str(tmp)],
              path, stdin=arr.tobytes())
    else:
      raise ImageError(f"{path}: unsupported video extension {ext!r} (use .mp4 or .gif)")


def load_video(path: str | os.PathLike, max_frames: int | None = None) -> tuple[np.ndarray, float]:
  """Reads a video (.mp4 with imageio-ffmpeg's ffmpeg binary: `_ffmpeg`; .gif via PIL).

  Returns:
    frames: (T, H, W, 3) float32 in [0, 1].
    fps: frames per second.
  """
  path = Path(path)
  if not path.is_file():
    raise ImageError(f"{path}: no such video file")
  frames = []
  if path.suffix.lower() == ".gif":
    try:
      im = Image.open(path)
    except (UnidentifiedImageError, OSError) as e:
      raise ImageError(f"{path}: unreadable video ({e})") from None
    with im:  # not _open: its EXIF transpose returns a single-frame copy
      fps = 1000.0 / max(im.info.get("duration", 100), 1)
      for i in range(getattr(im, "n_frames", 1)):
        if max_frames is not None and i >= max_frames:
          break
        im.seek(i)
        frames.append(np.asarray(im.convert("RGB"), np.float32) / 255.0)
    return np.stack(frames), fps
  limit = [] if max_frames is None else ["-frames:v", str(int(max_frames))]
  raw, log = _ffmpeg(["-i", str(path), *limit, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], path, loglevel="info",
                     what="unreadable video")
  # The output stream's line: "Stream #0:0: Video: rawvideo (RGB[24] / 0x18424752), rgb24(...), 550x506 [...], 24 fps"
  stream = [line for line in log.split("Output #0", 1)[-1].splitlines() if "Video:" in line]
  size = re.search(r" (\d+)x(\d+)[, ]", stream[0]) if stream else None
  rate = re.search(r" ([\d.]+)(k?) fps", stream[0]) if stream else None
  if size is None:
    raise ImageError(f"{path}: unreadable video (no video stream)")
  w, h = int(size.group(1)), int(size.group(2))
  fps = float(rate.group(1)) * (1000 if rate.group(2) else 1) if rate else 0.0
  if len(raw) % (w * h * 3):
    raise ImageError(f"{path}: unreadable video ({len(raw)} bytes of frames is not a multiple of {w}x{h}x3)")
  frames = np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3).astype(np.float32) / 255.0
  if not len(frames):
    raise ImageError(f"{path}: video has no frames")
  return frames, fps


def _ffmpeg(args: list[str], path: Path, *, stdin: bytes | None = None, loglevel: str = "error",
            what: str = "ffmpeg failed") -> tuple[bytes, str]:
  """Runs imageio-ffmpeg's ffmpeg binary on `args`; returns (stdout, stderr). Raises ImageError naming `path`.

  Why not imageio-ffmpeg's own reader/writer: they start ffmpeg with `preexec_fn=os.setpgrp`, which makes
  Python fork and run Python code in the child, and JAX (whose threads are running by then) warns on every
  run that this "will likely lead to a deadlock". `process_group=0` gives ffmpeg its own process group the
  same way (a Ctrl-C in the terminal reaches only our process, which then stops ffmpeg) with no Python in
  the child, so nothing runs the interpreter's fork hooks.
  """
  import imageio_ffmpeg  # pylint: disable=import-outside-toplevel
  cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostats", "-y", *(["-nostdin"] if stdin is None else []),
         "-loglevel", loglevel, *args]
  try:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, process_group=0, check=False)
  except OSError as e:
    raise ImageError(f"{path}: cannot run ffmpeg ({e})") from None
  log = proc.stderr.decode("utf-8", "replace")
  if proc.returncode:
    last = [line for line in log.splitlines() if line.strip()][-3:]
    raise ImageError(f"{path}: {what} ({' / '.join(last) or f'ffmpeg exit status {proc.returncode}'})")
  return proc.stdout, log
