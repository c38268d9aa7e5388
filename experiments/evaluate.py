"""The evaluate job: an avatar folder -> evaluation.json; a batch folder -> + evaluation.csv and report.html.

  python -m experiments.run --config=configs/evaluate.py --config.target=OUT [--config.arcface=model.onnx]
  python -m experiments.run --config=configs/evaluate.py:paper --config.target=OUT --config.insightface=DIR ...
"""

from __future__ import annotations

from pathlib import Path

from configs import evaluate as evaluate_config
from splatshot_jax import errors
from splatshot_jax.jobs import evaluation, preflight


def run(config) -> dict:
  # All of the config's problems at once, before any avatar is loaded or rendered.
  errors.raise_if_problems(preflight.check_evaluate(config, reference=evaluate_config.get_config()),
                           "cannot start the evaluation")
  result = evaluation.evaluate(config)
  target = Path(config.target)
  if "rows" in result:
    for entry in result["aggregate"]:
      if entry["n"]:
        print(f"{entry['metric']:<55} n={entry['n']:<3} mean {entry['mean']:.4f}  median {entry['median']:.4f}")
    print(f"official SplatShot median dlib distance (70 CelebA-HQ photos): {evaluation.OFFICIAL_MEDIAN_DLIB}")
    if result.get("paper"):
      paper = result["paper"]
      for source, label in paper["sources"].items():
        m = paper[source]
        get = lambda k: (m.get(k) or {}).get("mean") if isinstance(m.get(k), dict) else m.get(k)
        print(f"paper protocol, {label:<24} " + "  ".join(
            f"{k} {get(k):.4f}" if get(k) is not None else f"{k} -" for k in ("csim", "cv_csim", "fid", "clip_iqa",
                                                                              "akd")))
      print(f"wrote {target / 'paper_metrics.json'}")
    print(f"wrote {target / 'evaluation.csv'} and {target / 'report.html'}")
  else:
    print(f"wrote {target / 'evaluation.json'}")
  return result


if __name__ == "__main__":
  from experiments import run as _run
  _run.launch("configs/evaluate.py")
