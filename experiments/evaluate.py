"""The evaluate job: an avatar folder -> evaluation.json; a batch folder -> + evaluation.csv and report.html.

  python -m experiments.run --config=configs/evaluate.py --config.target=OUT [--config.arcface=model.onnx]
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
    print(f"wrote {target / 'evaluation.csv'} and {target / 'report.html'}")
  else:
    print(f"wrote {target / 'evaluation.json'}")
  return result


if __name__ == "__main__":
  from experiments import run as _run
  _run.launch("configs/evaluate.py")
