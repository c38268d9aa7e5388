"""A tiny job for the signal and lock tests, run in a subprocess through experiments.run's real entry point.

  python tests/interruptible_job.py CONFIG_JSON          # the job: a run folder, `steps` safe points
  python tests/interruptible_job.py --batch CONFIG_JSON  # the batch job with the pipeline stubbed (no JAX compile)

CONFIG_JSON holds out_dir, steps, and `signal_at`: the step at which the job sends itself SIGINT from inside a gc
callback (where JAX's `_xla_gc_callback` runs and a raised KeyboardInterrupt is only printed), or -1; with
`signal_in="fork"` it is sent from an at-fork hook instead (as logging's, run when a subprocess starts). Each step
prints "step I" and flushes, so the parent can also send a signal at a known point.
"""

import gc
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import run as run_lib  # noqa: E402
from splatshot_jax.io import atomic  # noqa: E402

try:
  from splatshot_jax.io.interrupt import check
except ImportError:  # the code before signal handling: no safe points
  def check(step=None, total=None):
    del step, total


def _signal_inside_gc_callback():
  def _xla_gc_callback(*args):  # named like JAX's: the handler must not rely on the name alone
    del args
    gc.callbacks.remove(_xla_gc_callback)
    os.kill(os.getpid(), signal.SIGINT)
  gc.callbacks.append(_xla_gc_callback)
  gc.collect()


def _signal_inside_fork_hook():
  fired = []

  def hook():
    if not fired:
      fired.append(1)
      os.kill(os.getpid(), signal.SIGINT)
  os.register_at_fork(after_in_parent=hook)
  pid = os.fork()  # (the video writer's subprocess runs the at-fork hooks too)
  if pid == 0:
    os._exit(0)
  os.waitpid(pid, 0)


def run(config) -> None:
  with atomic.run_folder(config.out_dir, job="interruptible") as out:
    for i in range(config.steps):
      check(step=i, total=config.steps)
      (out / f"step_{i}.txt").write_text(str(i))
      print(f"step {i}", flush=True)
      if i == config.signal_at:
        (_signal_inside_fork_hook if config.signal_in == "fork" else _signal_inside_gc_callback)()
      time.sleep(config.sleep)


def _config_file(values: dict, tmp: Path) -> str:
  path = tmp / "job_config.py"
  path.write_text("import ml_collections\n\ndef get_config(arg=None):\n"
                  f"  return ml_collections.ConfigDict({values!r})\n")
  return str(path)


def main(argv) -> int:
  batch = argv[1] == "--batch"
  values = json.loads(Path(argv[-1]).read_text())
  if batch:
    return _batch(values)
  sys.modules["interruptible_job"] = sys.modules[__name__]
  run_lib.JOBS["interruptible"] = "interruptible_job"
  values.setdefault("job", "interruptible")
  values.setdefault("sleep", 0.05)
  values.setdefault("signal_at", -1)
  values.setdefault("signal_in", "gc")
  return run_lib.main(["run", f"--config={_config_file(values, Path(values['out_dir']).parent)}"])


def _batch(values) -> int:
  """configs/batch.py:smoke on `photos` with the pipeline stubbed: photo `cut` sends SIGINT to the process in its
  step 1 (from a gc callback when values["in_gc"]) and its loop goes on with safe points."""
  from splatshot_jax.jobs import pipeline

  def run_photo(session, c, image, out_dir, log=print):
    del session, image, log
    for i in range(4):
      check(step=i, total=4)
      (Path(out_dir) / f"step_{i}.txt").write_text(str(i))
      print(f"{Path(c.photo).name} step {i}", flush=True)
      if Path(c.photo).stem == values["cut"] and i == 1:
        if values.get("in_gc"):
          _signal_inside_gc_callback()
        else:
          os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.05)
    return {}
  pipeline.check_inputs = lambda c, reference=None: None
  pipeline.load_session = lambda config, progress=True: None
  pipeline.run_photo = run_photo
  return run_lib.main(["run", "--config=configs/batch.py:smoke", f"--config.photos={values['photos']}",
                       f"--config.out_dir={values['out_dir']}", "--config.shard=0/1"])


if __name__ == "__main__":
  sys.exit(main(sys.argv))
