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
    print("\n".join(evaluation.summary_lines(result, config)))
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
    if any(ev.get("random_weights") for ev in result["evaluations"].values()):
      print("RANDOM WEIGHTS: this avatar comes from the install check (config.weights = random-tiny); its numbers "
            "test the evaluation, not the method")
    print(f"wrote {target / 'evaluation.json'}")
  return result


if __name__ == "__main__":
  from experiments import run as _run
  _run.launch("configs/evaluate.py")
