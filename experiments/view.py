"""Writes a self-contained viewer page next to a 3DGS .ply.

  python -m experiments.view out/run/avatar.ply              # -> out/run/viewer.html
  python -m experiments.view templates/nersemble-333/gaussians.ply --camera 8
  python -m experiments.view scene.ply --out /tmp/scene.html --screenshot docs/figures/viewer.png

Cameras to jump to come from beside the .ply when present: a run's cameras.json, a template / view
folder (meta.json + view_NNN.npz), a nerfstudio transforms.json or a COLMAP sparse/0; otherwise a
ring of 8 cameras around the Gaussians. avatar.ply and gaussians.ply get viewer.html, any other
NAME.ply gets NAME_viewer.html (so a run's base.ply gets base_viewer.html, as write_outputs does).
A file that is not a readable 3DGS PLY (or an unreadable camera file beside it) is one message, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from splatshot_jax.jobs import outputs
from splatshot_jax import errors, viewer
from splatshot_jax.cameras import CameraFormatError, load_multiview
from splatshot_jax.io import ply


def cameras_near(path: Path):
  """The cameras stored beside `path` (see the module docstring), or None."""
  folder = path.parent
  if (folder / "cameras.json").exists():
    return outputs.cameras_from_json(json.loads((folder / "cameras.json").read_text()))
  try:
    return load_multiview(folder).cameras
  except CameraFormatError:
    return None


def default_output(path: Path) -> Path:
  return path.parent / ("viewer.html" if path.stem in ("avatar", "gaussians") else f"{path.stem}_viewer.html")


def main(argv=None) -> Path:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("ply", type=Path, help="3DGS .ply (io.ply layout)")
  parser.add_argument("--out", type=Path, default=None, help="output .html (default: see above)")
  parser.add_argument("--camera", type=int, default=0, help="camera the page opens with")
  parser.add_argument("--background", default="1,1,1", help="r,g,b in [0, 1]")
  parser.add_argument("--screenshot", type=Path, default=None,
                      help="also save a PNG of the page (headless chromium) with its panel")
  parser.add_argument("--size", default="800,600", help="screenshot window W,H")
  args = parser.parse_args(argv)

  if not args.ply.is_file():
    raise ply.PlyError(f"{args.ply}: {'is a folder' if args.ply.is_dir() else 'no such file'}; expected a 3DGS .ply")
  g = ply.read_gaussians(args.ply)
  bg = tuple(float(v) for v in args.background.split(","))
  if len(bg) != 3:
    parser.error(f"--background must be r,g,b, got {args.background!r}")
  cams = cameras_near(args.ply)
  out = args.out or default_output(args.ply)
  # A run folder's config.json says which α clamp the avatar was made with (config.refit.alpha_max).
  viewer.write_viewer(out, g, cams, name=args.ply.parent.name + "/" + args.ply.name, background=bg,
                      initial_camera=args.camera, alpha_max=viewer.run_alpha_max(args.ply.parent / "config.json"))
  print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {g.num} Gaussians, "
        f"{'no' if cams is None else len(cams)} cameras{' (default ring)' if cams is None else ''})")
  if args.screenshot is not None:
    from splatshot_jax.viewer import browser  # pylint: disable=import-outside-toplevel
    from splatshot_jax.io.images import save_image  # pylint: disable=import-outside-toplevel
    w, h = (int(v) for v in args.size.split(","))
    # A fixed canvas size (#w, #h): headless chromium resizes its viewport at capture time.
    img = browser.screenshot(out, w, h, f"camera={args.camera}&w={w}&h={h}", budget_ms=5000)
    save_image(args.screenshot, img)
    print(f"wrote {args.screenshot}")
  return out


def launch(argv=None) -> int:
  """main() for the command line: a user error (bad PLY, bad camera file) is one message and exit code 2."""
  try:
    main(argv)
  except (errors.UserError, OSError, ValueError) as e:  # ValueError: a malformed cameras.json beside the .ply
    print(f"error: {e}", file=sys.stderr)
    return errors.EXIT_USER_ERROR
  return 0


if __name__ == "__main__":
  sys.exit(launch())
