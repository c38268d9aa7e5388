"""The platform a program is compiled for: it, not the host's default backend, picks the platform-dependent paths.

  platform.current()                       # "gpu" | "tpu" | "cpu": the target of the program being traced
  with platform.compiling_for(mesh):       # lower for the mesh's devices (e.g. an H100 topology on a CPU host)
    jax.jit(step).lower(*abstract_args).compile()
  platform.use_cudnn_attention(dtype, head_dim)   # the choices the call sites ask, from current()
  platform.view_batch()                            # views the rasterizer vmaps together (GPU 1, TPU 8, CPU all)

Why: `jax.default_backend()` is the host's platform. A program lowered on a CPU host for an H100 or a TPU
(`experiments.aot_check`, deviceless ahead-of-time compilation) would otherwise take the CPU branches: XLA
attention instead of cuDNN's fused kernel, vmapped instead of sequential views in the rasterizer. Outside
`compiling_for`, current() is the default backend, so ordinary runs are unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator

import jax
import jax.numpy as jnp

PLATFORMS = ("cpu", "gpu", "tpu")
_TARGET: contextvars.ContextVar[str | None] = contextvars.ContextVar("splatshot_target_platform", default=None)


def normalize(name: str) -> str:
  """"gpu" for cuda/rocm/gpu (XLA's platform names), "tpu", "cpu"; ValueError for anything else."""
  name = str(name).lower()
  if name in ("cuda", "rocm", "gpu"):
    return "gpu"
  if name in ("tpu", "cpu"):
    return name
  raise ValueError(f"platform {name!r}: expected one of cpu, gpu (cuda, rocm), tpu")


def platform_of(target: Any) -> str:
  """The platform of a Mesh, a sequence of devices, one device, or a platform name."""
  if isinstance(target, str):
    return normalize(target)
  if isinstance(target, jax.sharding.Mesh):
    target = target.devices.flat
  devices = list(target) if not hasattr(target, "platform") else [target]
  if not devices:
    raise ValueError("platform_of: no devices")
  kinds = {normalize(d.platform) for d in devices}
  if len(kinds) != 1:
    raise ValueError(f"platform_of: devices of several platforms {sorted(kinds)}")
  return kinds.pop()


@contextlib.contextmanager
def compiling_for(target: Any) -> Iterator[str]:
  """Traces inside the block choose the paths of `target`'s platform (a Mesh, devices or a platform name).

  JAX's trace caches are cleared on entry and exit: a function traced earlier for another platform would
  otherwise be reused from the cache (the platform is not part of jit's cache key).
  """
  name = platform_of(target)
  jax.clear_caches()
  token = _TARGET.set(name)
  try:
    yield name
  finally:
    _TARGET.reset(token)
    jax.clear_caches()


def current() -> str:
  """The platform the program being traced is compiled for: the `compiling_for` target, else the default backend."""
  target = _TARGET.get()
  return target if target is not None else normalize(jax.default_backend())


def use_cudnn_attention(dtype, head_dim: int, platform: str | None = None) -> bool:
  """cuDNN flash attention: GPU only, fp16/bf16 only, head size a multiple of 8 up to 128
  (SD-1.5 heads are 40/80/160 wide: 160 falls back, as does the VAE's single 512-wide head)."""
  platform = platform or current()
  return (platform == "gpu" and jnp.dtype(dtype) in (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))
          and head_dim % 8 == 0 and head_dim <= 128)


# Views rasterized together (vmapped) per step of the loop over views, by platform; None: all V at once.
# TPU: vmapping all 48 views of 560x816 at 300k Gaussians needs ~28 GB of temporaries (XLA's figure for a v5e,
# issue 19), 8 at a time ~1/6 of it while the batch still fills the chip. GPU: one view at a time (see below).
VIEW_BATCH = {"cpu": None, "gpu": 1, "tpu": 8}


def view_batch(platform: str | None = None) -> int | None:
  """How many views the rasterizer vmaps together on the target platform (None: all of them).

  GPU: 1, a lax.map over views: a vmapped sort is a batched sort, which XLA does not send to CUB's radix
  sort, and per-view buffers stay one view's. TPU: `VIEW_BATCH["tpu"]` views per lax.map step. CPU: all views.
  """
  return VIEW_BATCH[platform or current()]

