"""SplatShot over many photos: one avatar per photo, the models loaded and the step compiled once.

  python -m experiments.run --config=configs/batch.py --config.photos=photos/ --config.out_dir=OUT \
      --config.weights=WEIGHTS --config.template=templates/nersemble-333-48views
  python -m experiments.run --config=configs/batch.py:smoke --config.photos='photos/*.jpg'   # install-check weights

Every field of configs/splatshot_sd15.py is here and overridable the same way (`--config.sampler.strength=0.6`);
`photo` is set per photo. `shard = "i/n"` runs every n-th photo from the i-th of the sorted list; "" takes
(jax.process_index(), jax.process_count()) in a multi-host JAX job, or the task's place in a SLURM job array. See splatshot_jax/jobs/batch.py for the output layout.
"""

from configs import splatshot_sd15


def get_config(arg=None):
  if arg not in (None, "", "smoke"):
    raise ValueError(f"configs/batch.py: unknown arg {arg!r}; expected '' or 'smoke'")
  config = splatshot_sd15.get_config(arg)
  config.job = "batch"
  config.photos = ""  # a folder of photos or a glob ('photos/*.jpg'); sorted by path
  config.out_dir = "outputs/batch"
  config.shard = ""  # "i/n"; "": (jax.process_index(), jax.process_count()), or the SLURM array task, or 0/1
  if arg == "smoke":
    config.out_dir = "outputs/batch_smoke"
  return config
