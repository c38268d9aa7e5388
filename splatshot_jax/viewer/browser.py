"""Headless Chromium for viewer pages: a screenshot and the page's state, for tests and docs.

WebGL2 runs headless on the CPU through SwiftShader (`--use-angle=swiftshader
--enable-unsafe-swiftshader`). Chromium's new headless mode emulates window decorations (about
140 px of a --window-size go to them, and the width is at least 500 px), so pages are opened in a
window larger than the canvas and the screenshot is cropped to the canvas at the top-left.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader",
          "--enable-unsafe-swiftshader", "--disable-background-networking",
          "--disable-component-update", "--disable-sync", "--no-first-run",
          "--force-device-scale-factor=1", "--hide-scrollbars")


def find_chromium() -> str | None:
  """Path of a Chromium/Chrome binary ($CHROMIUM overrides), or None."""
  env = os.environ.get("CHROMIUM")
  if env:
    return env
  for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
    path = shutil.which(name)
    if path:
      return path
  return None


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
  exe = find_chromium()
  if exe is None:
    raise FileNotFoundError("no chromium on PATH (apt-get install chromium, or set $CHROMIUM)")
  with tempfile.TemporaryDirectory(prefix="splatshot-chromium-") as profile:
    return subprocess.run([exe, *_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          timeout=timeout, check=False)


def _url(html: str | os.PathLike, fragment: str) -> str:
  return Path(html).resolve().as_uri() + (f"#{fragment}" if fragment else "")


def page_state(html: str | os.PathLike, fragment: str = "", *, budget_ms: int = 3000,
               timeout: float = 60.0) -> dict[str, str]:
  """The viewer's <body> attributes after loading: {'data-state': 'ready'|'error', ...}."""
  r = _run(["--window-size=800,600", f"--virtual-time-budget={budget_ms}", "--dump-dom",
            _url(html, fragment)], timeout)
  m = re.search(r"<body([^>]*)>", r.stdout.decode("utf-8", "replace"))
  if m is None:
    raise RuntimeError(f"chromium printed no page for {html} (rc={r.returncode}): "
                       f"{r.stderr.decode('utf-8', 'replace')[-500:]}")
  return {k: v for k, v in re.findall(r'([\w-]+)="([^"]*)"', m.group(1))}


def screenshot(html: str | os.PathLike, width: int, height: int, fragment: str = "", *,
               out: str | os.PathLike | None = None, window: tuple[int, int] | None = None,
               budget_ms: int = 3000, timeout: float = 60.0) -> np.ndarray:
  """Screenshot of a page, cropped to its top-left width x height pixels.

  Args:
    html: the page file.
    width, height: size of the crop (the viewer's canvas with #w=..&h=..).
    fragment: URL fragment without '#', e.g. 'camera=3&w=128&h=128&ui=0'.
    out: also keep the full PNG here.
    window: browser window size; default leaves room for the emulated decorations.
    budget_ms: virtual time the page gets before the capture.
  Returns:
    (height, width, 3) uint8.
  """
  from PIL import Image  # pylint: disable=import-outside-toplevel
  window = window or (max(width, 800), height + 400)
  with tempfile.TemporaryDirectory(prefix="splatshot-shot-") as tmp:
    png = Path(out) if out is not None else Path(tmp) / "shot.png"
    r = _run([f"--window-size={window[0]},{window[1]}", f"--virtual-time-budget={budget_ms}",
              f"--screenshot={png}", _url(html, fragment)], timeout)
    if not png.exists():
      raise RuntimeError(f"chromium wrote no screenshot of {html} (rc={r.returncode}): "
                         f"{r.stderr.decode('utf-8', 'replace')[-500:]}")
    img = np.asarray(Image.open(png).convert("RGB"))
  if img.shape[0] < height or img.shape[1] < width:
    raise RuntimeError(f"screenshot is {img.shape[1]}x{img.shape[0]}, smaller than {width}x{height}")
  return img[:height, :width].copy()
