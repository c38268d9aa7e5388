"""The jobs built on the method: each job's input checks, loading, run, outputs, batch, evaluation and report.

  inputs       where a job's inputs are (weights layout, template folders, the batch's photos and shards)
  preflight    every job's checks, before any model is built (`preflight.CHECKS`)
  pipeline     the single SplatShot run: weights, template, photo, conditioning -> sampler -> outputs
  outputs      what a run writes (PLYs, views, turntable, x0 grid, cameras, metrics, viewer page)
  batch        many photos through one compiled step, resume, shards, summary tables
  evaluation   avatar metrics (identity vs yaw, ArcFace, view consistency, official turntables)
  report       the HTML report of an evaluated batch
  ablation, refit_batching   the CPU experiments of docs/benchmarks.md (analytic prior)

Jobs import the method (`guidance`, `sampler`) and everything below it; nothing below imports a job
(import-linter contracts in pyproject.toml).
"""
