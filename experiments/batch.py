"""The batch job: a folder (or glob) of photos -> one SplatShot avatar each, OUT/summary.csv, OUT/failures.json.

  python -m experiments.run --config=configs/batch.py --config.photos=DIR_OR_GLOB --config.out_dir=OUT

Exits with status 1 when a photo failed (listed in OUT/failures.json); a rerun skips finished photos (whose
file is unchanged). Ctrl-C / SIGTERM: the photo that runs is recorded as interrupted, the tables are rebuilt, exit
130 / 143.
"""

from __future__ import annotations

import sys

from configs import batch as batch_config
from splatshot_jax.jobs import batch


def run(config) -> batch.BatchResult:
  result = batch.run_batch(config, reference=batch_config.get_config())
  print(f"batch: {len(result.finished)} finished now, {len(result.skipped)} before, {len(result.failed)} failed "
        f"(shard {result.shard[0]}/{result.shard[1]}); table: {config.out_dir}/summary.csv")
  if result.failed:
    sys.exit(f"{len(result.failed)} photo(s) failed, see {config.out_dir}/failures.json")
  return result


if __name__ == "__main__":
  from experiments import run as _run
  _run.launch("configs/batch.py")
