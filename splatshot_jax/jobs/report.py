"""The batch evaluation report: one HTML file, plots drawn as inline SVG (no plotting dependency).

  write_report(OUT / "report.html", rows, evaluations, aggregate)     # called by evaluation.evaluate_batch

Top: the aggregate table (mean, median, share under dlib's 0.6 same-person line) with the official SplatShot's
median dlib distance (0.54 over 70 CelebA-HQ photos) beside ours. Then one row per photo: the photo, the frontal
and two side views, the turntable GIF, its numbers, identity vs yaw and the per-step discrepancy. Images are
relative paths into the photo folders (OUT/<photo>/evaluation/), so the report travels with OUT.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Sequence

from splatshot_jax.face.identity import SAME_PERSON_THRESHOLD as SAME_PERSON  # dlib's "same person" line, 0.6
from splatshot_jax.io.atomic import atomic_path

OFFICIAL_MEDIAN_DLIB = 0.54  # the official SplatShot's median dlib distance over 70 CelebA-HQ photos

_STYLE = """
body { font-family: sans-serif; margin: 16px; color: #222; }
table { border-collapse: collapse; }
td, th { border: 1px solid #ccc; padding: 4px 6px; vertical-align: top; font-size: 13px; }
th { background: #f2f2f2; }
.num td { text-align: right; }
.num td:first-child { text-align: left; }
.headline { font-size: 15px; background: #f7f7e8; padding: 8px; border: 1px solid #ddc; max-width: 980px; }
.photo img { width: 104px; display: block; }
.plots svg { display: block; }
.bad { overflow-wrap: anywhere; }
.name { min-width: 76px; max-width: 110px; overflow-wrap: anywhere; }
.small td { border: none; padding: 0 6px 0 0; font-size: 12px; white-space: nowrap; }
.bad { color: #b00; }
.note { color: #555; font-size: 13px; max-width: 980px; }
.warning { font-size: 15px; background: #fde8e8; color: #700; padding: 8px; border: 1px solid #d99; max-width: 980px; }
"""


def _fmt(x, digits: int = 3) -> str:
  if x is None or x == "":
    return "–"
  try:
    return f"{float(x):.{digits}f}"
  except (TypeError, ValueError):
    return html.escape(str(x))


def svg_plot(series: Sequence[dict], *, hlines: Sequence[dict] = (), xlabel: str = "", ylabel: str = "",
             width: int = 280, height: int = 170, ylim: tuple[float, float] | None = None) -> str:
  """A small line plot as an inline <svg>.

  Args:
    series: [{"x": [...], "y": [... or None], "label": str, "color": css, "dash": bool}]; None breaks the line
      and is skipped (e.g. no face found at that yaw).
    hlines: [{"y": float, "label": str, "color": css, "left": bool}] horizontal reference lines (label at the
      right end, or the left one).
    xlabel, ylabel: axis captions; ylim: (lo, hi), default the data range (with the hlines).
  """
  left, right, top, bottom = 40, 8, 8, 30
  pts = [(x, y) for s in series for x, y in zip(s["x"], s["y"]) if y is not None and math.isfinite(y)]
  ys = [p[1] for p in pts] + [h["y"] for h in hlines]
  xs = [x for s in series for x in s["x"]] or [0.0, 1.0]
  lo, hi = ylim if ylim is not None else ((min(ys), max(ys)) if ys else (0.0, 1.0))
  if hi - lo < 1e-12:
    lo, hi = lo - 0.5, hi + 0.5
  x0, x1 = min(xs), max(xs)
  if x1 - x0 < 1e-12:
    x0, x1 = x0 - 0.5, x1 + 0.5
  sx = lambda x: left + (x - x0) / (x1 - x0) * (width - left - right)
  sy = lambda y: top + (hi - y) / (hi - lo) * (height - top - bottom)
  out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
         f'viewBox="0 0 {width} {height}" style="background:#fff">',
         f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
         'fill="none" stroke="#999"/>']
  for v, anchor in ((lo, "end"), (hi, "end")):
    out.append(f'<text x="{left - 3}" y="{sy(v) + 4:.1f}" font-size="10" text-anchor="{anchor}">{v:.3g}</text>')
  for v in (x0, x1):
    out.append(f'<text x="{sx(v):.1f}" y="{height - bottom + 12}" font-size="10" text-anchor="middle">{v:.4g}</text>')
  out.append(f'<text x="{(left + width - right) / 2:.1f}" y="{height - 4}" font-size="11" '
             f'text-anchor="middle">{html.escape(xlabel)}</text>')
  out.append(f'<text x="10" y="{(top + height - bottom) / 2:.1f}" font-size="11" text-anchor="middle" '
             f'transform="rotate(-90 10 {(top + height - bottom) / 2:.1f})">{html.escape(ylabel)}</text>')
  for h in hlines:
    if lo <= h["y"] <= hi:
      out.append(f'<line x1="{left}" x2="{width - right}" y1="{sy(h["y"]):.1f}" y2="{sy(h["y"]):.1f}" '
                 f'stroke="{h.get("color", "#888")}" stroke-dasharray="4 3"/>')
      lx, anchor = (left + 2, "start") if h.get("left") else (width - right - 2, "end")
      out.append(f'<text x="{lx}" y="{sy(h["y"]) - 2:.1f}" font-size="9" text-anchor="{anchor}" '
                 f'fill="{h.get("color", "#888")}">{html.escape(h.get("label", ""))}</text>')
  legend_y = top + 11
  for s in series:
    color, dash = s.get("color", "#1f77b4"), ' stroke-dasharray="5 3"' if s.get("dash") else ""
    segments, cur = [], []
    for x, y in zip(s["x"], s["y"]):
      if y is None or not math.isfinite(y):
        if cur:
          segments.append(cur)
        cur = []
      else:
        cur.append(f"{sx(x):.1f},{sy(y):.1f}")
    if cur:
      segments.append(cur)
    for seg in segments:
      out.append(f'<polyline points="{" ".join(seg)}" fill="none" stroke="{color}" stroke-width="1.6"{dash}/>')
      out.extend(f'<circle cx="{p.split(",")[0]}" cy="{p.split(",")[1]}" r="2" fill="{color}"/>' for p in seg)
    if s.get("label"):
      out.append(f'<text x="{left + 4}" y="{legend_y}" font-size="10" fill="{color}">{html.escape(s["label"])}</text>')
      legend_y += 11
  out.append("</svg>")
  return "".join(out)


def _aggregate_html(table: Sequence[dict]) -> str:
  head = "<tr><th>metric</th><th>n</th><th>mean</th><th>median</th><th>% under 0.6 (dlib same person)</th></tr>"
  body = []
  for e in table:
    under = e.get("under_0.6")
    body.append(f"<tr><td>{html.escape(e['metric'])}</td><td>{e['n']}</td><td>{_fmt(e['mean'])}</td>"
                f"<td>{_fmt(e['median'])}</td><td>{'' if 'under_0.6' not in e else _fmt(None if under is None else 100 * under, 1)}</td></tr>")
  body.append(f"<tr><td><b>official SplatShot, median dlib distance over 70 CelebA-HQ photos (published)</b></td>"
              f"<td>70</td><td>–</td><td><b>{OFFICIAL_MEDIAN_DLIB:.2f}</b></td><td></td></tr>")
  return f'<table class="num">{head}{"".join(body)}</table>'


def _headline(table: Sequence[dict]) -> str:
  """One sentence that puts our median dlib distance beside the official turntables' and the published 0.54."""
  by_key = {e["key"]: e for e in table}
  part = lambda key, what: (f"{what} <b>{_fmt(by_key[key]['median'], 3)}</b> (n = {by_key[key]['n']}, "
                            f"{_fmt(100 * by_key[key]['under_0.6'], 0)}% under 0.6)" if by_key[key]["n"] else
                            f"{what} – (none)")
  return (f"<p class='headline'>Median dlib distance: {part('dlib_mean_near_frontal', 'ours')}; "
          f"{part('official_dlib_median', 'official turntables of the same photos')}; published official "
          f"SplatShot <b>{OFFICIAL_MEDIAN_DLIB:.2f}</b> (70 CelebA-HQ photos). Lower is better.</p>")


def _image(src: str, alt: str, width: int = 112) -> str:
  return f'<img src="{html.escape(src)}" alt="{html.escape(alt)}" width="{width}">'


def _photo_row(row: dict, ev: dict | None, out_dir: Path) -> str:
  name = html.escape(Path(row["photo"]).name)
  if ev is None:
    return (f'<tr><td class="name">{name}</td><td colspan="7" class="bad">{html.escape(row["status"])}: '
            f'{html.escape(row.get("error", ""))}</td></tr>')
  folder = row["folder"]
  cells = []
  for f, alt in (("photo.jpg", "photo"), ("frontal.png", "frontal"), ("side_left.png", "side (left)"),
                 ("side_right.png", "side (right)"), ("turntable.gif", "turntable")):
    rel = f"{folder}/evaluation/{f}"
    cells.append(f'<td class="photo">{_image(rel, alt) if (out_dir / rel).is_file() else "–"}<br>{alt}</td>')
  numbers = [("dlib |yaw| ≤ 30", row["dlib_mean_near_frontal"]), ("dlib yaw 0", row["dlib_frontal"]),
             ("faces |yaw| ≤ 30", row["faces_found_near_frontal"]),
             ("dlib official", row["official_dlib_median"]), ("ArcFace |yaw| ≤ 30", row["arcface_mean_near_frontal"]),
             ("ArcFace official", row["official_arcface_mean"]), ("PSNR (dB)", row["psnr"]), ("SSIM", row["ssim"]),
             ("reproj. depth", row["reproj_depth_rel"]), ("reproj. L1", row["reproj_views_l1"]),
             ("discrepancy", row["final_discrepancy"])]
  num_html = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v)) if v != '' else '–'}</td></tr>"
                     for k, v in numbers)
  ident = ev.get("identity", {})
  series = []
  if ident.get("dlib"):
    series.append({"x": ident["yaws"], "y": ident["dlib"], "label": "ours (dlib)", "color": "#1f77b4"})
  hlines = [{"y": SAME_PERSON, "label": "0.6 same person", "color": "#b00"}]
  off = ev.get("official") or {}
  if off.get("dlib_median") is not None:
    hlines.append({"y": off["dlib_median"], "label": "official turntable", "color": "#2a2", "left": True})
  found = [y for y in (ident.get("dlib") or []) if y is not None]
  yaw_plot = svg_plot(series, hlines=hlines, xlabel="yaw (deg)", ylabel="dlib distance", width=250,
                      ylim=(0.0, max([1.0] + found))) if series else \
      html.escape(ident.get("skipped", "no identity"))
  disc = ev.get("discrepancy_per_step") or []
  disc_plot = svg_plot([{"x": list(range(len(disc))), "y": disc, "color": "#d62728"}], xlabel="step", width=220,
                       ylabel="discrepancy L") if disc else "–"
  # The two plots share a column, one above the other, so that the table fits a 1200 px window.
  return (f"<tr><td class='name'>{name}</td>{''.join(cells)}<td><table class='small'>{num_html}</table></td>"
          f"<td class='plots'>{yaw_plot}{disc_plot}</td></tr>")


def paper_table_html(paper: dict) -> str:
  """The paper protocol's table (`splatshot_jax.jobs.paper_metrics`): a row per metric, renders and diffusion
  columns with the counts behind each number, and why the official turntables are not in it."""
  def cell(source: str, key: str, digits: int = 4) -> str:
    m = paper.get(source, {})
    if key in ("csim", "cv_csim", "akd"):
      e = m.get(key)
      if e is None:
        return "<td>–</td>"
      skipped = {"csim": lambda: f"{e['skipped_views']} views skipped (no face / file), {e['skipped_photos']} "
                                 "photos without a face",
                 "cv_csim": lambda: f"{e['skipped_pairs']} pairs skipped",
                 "akd": lambda: f"{e['skipped']} skipped"}[key]()
      return f"<td><b>{_fmt(e['mean'], digits)}</b><br><small>{e['pairs']} pairs; {html.escape(skipped)}</small></td>"
    if key == "kid":
      return (f"<td>{_fmt(m.get('kid_mean'), 5)} ± {_fmt(m.get('kid_std'), 5)}</td>" if "kid_mean" in m else
              "<td>–</td>")
    return f"<td><b>{_fmt(m.get(key), digits)}</b></td>"

  metrics = [("CSIM ↑ (ArcFace, photo vs view)", "csim", 4), ("CV-CSIM ↑ (ArcFace, 6 view pairs)", "cv_csim", 4),
             ("FID ↓ (Inception-v3, vs FFHQ subset)", "fid", 2), ("KID ↓ (same features)", "kid", 5),
             ("CLIP-IQA ↑ (Good/Bad photo.)", "clip_iqa", 4), ("AKD ↓ (68 landmarks, photo vs frontal view, in "
                                                              "inter-ocular distances)", "akd", 4)]
  sources = paper.get("sources", {"renders": "3DGS renderings", "diffusion": "final diffusion outputs"})
  head = "<tr><th>metric</th>" + "".join(f"<th>{html.escape(v)}</th>" for v in sources.values()) + "</tr>"
  body = "".join(f"<tr><td>{html.escape(label)}</td>{''.join(cell(s, key, d) for s in sources)}</tr>"
                 for label, key, d in metrics)
  counts = ", ".join(f"{html.escape(v)}: {paper.get(s, {}).get('images', 0)} images "
                     f"({paper.get('missing_files', {}).get(s, 0)} missing files)" for s, v in sources.items())
  ffhq = paper.get("ffhq")
  ref = (f"FID/KID reference: {ffhq['images']} FFHQ images (random.seed(42) over the sorted list)." if ffhq else
         "FID/KID: not computed (give --config.fid_weights and --config.ffhq).")
  views = ", ".join(f"{v:03d}" for v in paper.get("views", []))
  ts = paper.get("paper_test_set")
  if ts and (ts["here"] != ts["of"] or ts["others"]):
    ref += (f" Not the paper's test set: {ts['here']} of its {ts['of']} CelebA-3D photos (00000-00099 without "
            f"00001) and {ts['others']} others, so the numbers are not comparable to the paper's table yet.")
  return (f"<h2>The paper's protocol</h2><p class='note'>{paper.get('photos', 0)} photos; views {views} of the "
          f"48-view rig; {counts}. {html.escape(ref)} Empty cells: the files for that metric were not given. "
          "See splatshot_jax/jobs/paper_metrics.py for the definitions and their sources.</p>"
          f"<table class='num'>{head}{body}</table>"
          f"<p class='note'>{html.escape(paper.get('turntables', ''))}</p>")


def _random_weights_banner(random_weights: int, done: int) -> str:
  """The warning on top of a report whose avatars came from the install check's random weights."""
  if not random_weights:
    return ""
  return (f"<p class='warning'><b>Random weights.</b> {random_weights} of the {done} evaluated avatars were made "
          "with the install check's random tiny denoiser (config.weights = \"random-tiny\"): their numbers test "
          "the evaluation, not the method, and are not comparable with the published official 0.54. Give "
          "--config.weights=WEIGHTS to the batch for a real evaluation.</p>")


def write_report(path, rows: Sequence[dict], evaluations: dict, table: Sequence[dict], *,
                 paper: dict | None = None, random_weights: int = 0) -> Path:
  """Writes the report (see the module docstring); `rows` as in evaluation.csv, `evaluations` by folder name.

  paper: the paper protocol's results (`paper_metrics.evaluate_paper`); its table follows the aggregate one.
  random_weights: how many avatars came from random weights (the install check); > 0 puts a warning on top.
  """
  path = Path(path)
  done = sum(r["status"] == "done" for r in rows)
  title = "SplatShot evaluation" + (" (random weights)" if random_weights else "")
  parts = [
      f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>",
      f"<style>{_STYLE}</style></head><body>",
      f"<h1>{title}</h1>{_random_weights_banner(random_weights, done)}<p class='note'>{done} of {len(rows)} photos evaluated. Identity: dlib "
      "distance between the photo and the avatar rendered on a yaw sweep in the template's rig frame (lower is "
      f"more alike; dlib calls &lt; {SAME_PERSON} the same person); the official turntable videos get the same "
      "metric frame by frame. Consistency: PSNR/SSIM of the final diffusion views against the avatar's renders of "
      "the same cameras, and the reprojection error of each view warped into its nearest neighbour with the "
      "avatar's depth (where both alphas are high).</p>",
      "<h2>Aggregate</h2>", _headline(table), _aggregate_html(table),
      paper_table_html(paper) if paper else "",
      "<h2>Per photo</h2><table><tr><th>photo</th><th>input</th><th>frontal</th><th>side</th><th>side</th>"
      "<th>turntable</th><th>numbers</th><th>identity vs yaw; discrepancy per step</th></tr>",
  ]
  parts += [_photo_row(r, evaluations.get(r["folder"]), path.parent) for r in rows]
  parts.append("</table></body></html>")
  with atomic_path(path) as tmp:
    Path(tmp).write_text("\n".join(parts), encoding="utf-8")
  return path
