"""Views sharded over 4 forced CPU devices (splatshot_jax/device/sharding.py): the sharded SplatShot step equals the
single-device one, and its arrays really are split over the devices.

The 4 devices exist only in a subprocess (XLA_FLAGS=--xla_force_host_platform_device_count=4 must be set before jax
starts), so the rest of the suite keeps its one device.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from splatshot_jax.device import sharding

SCRIPT = r'''
import json, types
import jax, jax.numpy as jnp, numpy as np
from splatshot_jax import fit as fit_lib, guidance, synthetic
from splatshot_jax.device import sharding
from splatshot_jax.diffusion import ddim, presets
from splatshot_jax.priors.analytic import AnalyticCond, make_analytic_prior, same_view_mask

assert jax.device_count() == 4, jax.devices()
mesh = sharding.make_mesh(-1)
out = {"mesh": mesh.size}
sched = ddim.make_schedule(25)
t = jnp.int32(481)
V = 4

def err(a, b):
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

def split(x):
  s = x.sharding
  return (not s.is_fully_replicated) and len(s.device_set) == 4

def step(prior, cond, scene, state, m, refit_iters=2):
  cfg = guidance.GuidanceConfig(sdi=False, guidance_weight=50.0, ssim_padding="same")  # 8x8 views < SSIM window
  return guidance.splatshot_step(state, t, prior=sharding.shard_prior(prior, m), schedule=sched, cameras=cams,
                                 cond_photo=sharding.put_views(cond, m), scene=scene(m), cfg=cfg,
                                 refit_iters=jnp.int32(refit_iters))

# 1. Analytic prior, real 3DGS refit with B = 4 views per iteration (one per device). The set's members are not
# the model's renders (a member equal to them would put the L1 gradient at its kink, where rounding flips it).
g, _ = synthetic.head_gaussians(80, sh_degree=0)
cams = synthetic.head_rig(V, width=8, height=8, pitches=(0.0,))
base = np.asarray(guidance.gaussian_scene().render(g, cams))
prior = make_analytic_prior(np.concatenate([0.7 * base + 0.15, base[..., ::-1]]), np.asarray(sched.alphas_cumprod))
cond = AnalyticCond(same_view_mask(np.tile(np.arange(V), 2), np.arange(V)))
z = jax.random.normal(jax.random.key(0), base.shape)
state = guidance.SplatShotState(z=z, eps_gt=jnp.zeros_like(z), model=g, rng=jax.random.key(1))
scenes = {m: guidance.gaussian_scene(fit_lib.FitConfig(views_per_iter=V, mesh=m)) for m in (None, mesh)}
scene = lambda m: scenes[m]  # built once: a new Scene3D is a new static argument (a recompile)
one, aux1 = step(prior, cond, scene, state, None, 5)
four, aux4 = step(prior, cond, scene, state, mesh, 5)
size = guidance.splatshot_step._cache_size()
step(prior, cond, scene, state, mesh, 2)  # another refit length: the same program
out["analytic"] = {"z": err(one.z, four.z), "model": err(one.model, four.model),
                   "renders": err(aux1.renders, aux4.renders), "z_split": split(four.z),
                   "x0_split": split(aux4.x0_images), "z_moved": float(jnp.max(jnp.abs(one.z - z))),
                   "model_moved": err(one.model, g), "recompiled": guidance.splatshot_step._cache_size() - size}

# The refit's per-view losses come back split over the devices (each device rendered its own view).
per_view = sharding.over_views(lambda idx, x: (x[idx] * 2.0,), mesh, (True, False))
(res,) = jax.jit(per_view)(jnp.arange(V), jnp.arange(V, dtype=jnp.float32))
out["refit_split"] = split(res) and np.array_equal(np.asarray(res), 2.0 * np.arange(V))

# 2. The tiny SD-shaped prior (UNet + 2 ControlNets + IP-Adapter + VAE, random weights): eps, decode, decode VJP.
sd = presets.random_stable_diffusion("tiny", 0, view_chunk=1, decode_chunk=1)
sd_cond = presets.random_cond("tiny", jax.random.key(2), num_views=V, height=16, width=16, text_len=3, ip_tokens=2)
zl = jax.random.normal(jax.random.key(3), (V, 2, 2, 4))
stack = lambda m: guidance.Scene3D(render=lambda model, c: model,
                                   refit=lambda model, c, imgs, w, rng, n: 0.5 * (model + imgs))
sd_state = guidance.SplatShotState(z=zl, eps_gt=jnp.zeros_like(zl), model=jnp.full((V, 16, 16, 3), 0.5),
                                   rng=jax.random.key(4))
one, aux1 = step(sd, sd_cond, stack, sd_state, None)
four, aux4 = step(sd, sd_cond, stack, sd_state, mesh)
out["sd"] = {"z": err(one.z, four.z), "x0": err(aux1.x0_images, aux4.x0_images), "z_split": split(four.z),
             "x0_split": split(aux4.x0_images), "z_moved": float(jnp.max(jnp.abs(one.z - zl))),
             "scale": float(jnp.max(jnp.abs(one.z)))}
print("RESULT " + json.dumps(out))
'''


def test_sharded_step_equals_single_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
             PYTHONPATH=str(Path(__file__).resolve().parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
  r = json.loads(line[len("RESULT "):])
  assert r["mesh"] == 4
  a, s = r["analytic"], r["sd"]
  # Same step (eps, decode VJP, confidence, the B = 4 refit split one view per device, renders, correction) on 1 and
  # 4 devices; the per-device programs round differently (measured: ~3e-6 after 20 refit iterations).
  assert a["z"] < 1e-5 and a["renders"] < 1e-5 and a["model"] < 1e-5, a
  assert a["model_moved"] > 1e-3 and a["recompiled"] == 0, a
  assert s["z"] < 1e-5 * max(1.0, s["scale"]) and s["x0"] < 1e-5, s
  assert a["z_moved"] > 1e-2 and s["z_moved"] > 1e-2  # the step did something to compare
  assert a["z_split"] and a["x0_split"] and s["z_split"] and s["x0_split"], r
  assert r["refit_split"], r


def test_mesh_settings():
  assert sharding.make_mesh(1) is None and sharding.make_mesh(-1) is None  # the suite's one device
  with pytest.raises(ValueError, match="config.mesh.views"):
    sharding.make_mesh(2)
