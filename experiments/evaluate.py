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
    print("\n".join(evaluation.summary_lines(result, config)))
    print(f"wrote {target / 'evaluation.csv'} and {target / 'report.html'}")
  else:
    if any(ev.get("random_weights") for ev in result["evaluations"].values()):
      print("RANDOM WEIGHTS: this avatar comes from the install check (config.weights = random-tiny); its numbers "
            "test the evaluation, not the method")
    print(f"wrote {target / 'evaluation.json'}")
  return result


if __name__ == "__main__":
  from experiments import run as _run
  _run.launch("configs/evaluate.py")
