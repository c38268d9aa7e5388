"""Accelerators a program can be compiled for without one present (deviceless ahead-of-time compilation).

  target = targets.get("h100")                    # KeyError-free: UserError naming the choices
  devices = targets.topology_devices(target)      # compile-only devices (needs the plugin: the [aot] extra)
  mesh = jax.sharding.Mesh(np.array(devices[:1]), ("views",))

The figures are the vendors' published ones (NVIDIA's H100/H200/A100 data sheets and CUDA occupancy tables:
SM count, shared memory per SM and per block, L2, memory size and bandwidth, boost clock, compute capability;
Google Cloud's TPU v5e/v5p/v6e pages: HBM per chip, topology names). XLA's GPU compiler reads them from a
`GpuTargetConfigProto` (text format, `gpu_target_config`); a TPU is named by its topology to libtpu.
`memory_analysis()` of an executable compiled this way is XLA's buffer assignment for that device, no measurement.
"""

from __future__ import annotations

import dataclasses

from splatshot_jax.errors import UserError

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class GpuFigures:
  """An NVIDIA GPU's published figures (per SM unless said otherwise)."""

  sm_count: int
  compute_capability: tuple[int, int]
  shared_memory_per_sm: int  # bytes
  shared_memory_per_block_optin: int  # bytes (cudaFuncAttributeMaxDynamicSharedMemorySize limit)
  l2_bytes: int
  memory_bytes: int
  bandwidth_bytes_s: float
  clock_ghz: float  # boost
  fpus_per_sm: int  # FP32 lanes
  threads_per_sm: int = 2048
  registers_per_sm: int = 65536


@dataclasses.dataclass(frozen=True)
class Target:
  """One accelerator chip. kind: "gpu" or "tpu"; memory_bytes: what one chip holds (HBM)."""

  name: str
  kind: str
  description: str
  memory_bytes: int
  gpu: GpuFigures | None = None
  # TPU: get_topology_desc arguments for one chip (v5p's smallest topology is 2x2x1: one of its chips is used).
  topology: str = ""
  chip_config: str = "default"
  chips_per_host_bounds: tuple[int, int, int] = (1, 1, 1)


TARGETS = {
    t.name: t for t in (
        Target("h100", "gpu", "NVIDIA H100 SXM5 80GB", 80 * GiB,
               GpuFigures(132, (9, 0), 228 * 1024, 227 * 1024, 50 * 2**20, 80 * GiB, 3.35e12, 1.98, 128)),
        Target("h200", "gpu", "NVIDIA H200 SXM 141GB", 141 * 10**9,
               GpuFigures(132, (9, 0), 228 * 1024, 227 * 1024, 50 * 2**20, 141 * 10**9, 4.8e12, 1.98, 128)),
        Target("a100", "gpu", "NVIDIA A100 SXM4 80GB", 80 * GiB,
               GpuFigures(108, (8, 0), 164 * 1024, 163 * 1024, 40 * 2**20, 80 * GiB, 2.039e12, 1.41, 64)),
        Target("v5e", "tpu", "Google TPU v5e (v5 lite), one chip, 16 GB HBM2", 16 * 10**9, topology="v5e:1x1"),
        Target("v5p", "tpu", "Google TPU v5p, one chip (megacore) of a 2x2x1 slice, 95 GB HBM2e", 95 * 10**9,
               topology="v5:2x2x1", chip_config="megacore", chips_per_host_bounds=(2, 2, 1)),
        Target("v6e", "tpu", "Google TPU v6e (Trillium), one chip, 32 GB HBM", 32 * 10**9, topology="v6e:1x1"),
    )
}


def get(name: str) -> Target:
  """The target called `name` (h100, h200, a100, v5e, v5p, v6e); UserError otherwise."""
  if name not in TARGETS:
    raise UserError(f"--target={name!r}: expected one of {', '.join(TARGETS)}")
  return TARGETS[name]


def gpu_target_config(g: GpuFigures, cudnn=(9, 8, 0), cuda=(13, 0, 0)) -> str:
  """XLA's `GpuTargetConfigProto` in text format for the figures g (what the CUDA plugin compiles against).

  cudnn/cuda: the library versions the executable may assume (those of the jax-cuda13 wheels).
  """
  major, minor = g.compute_capability
  version = lambda v: f"{{ major: {v[0]} minor: {v[1]} patch: {v[2]} }}"
  return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {g.shared_memory_per_sm}
  threads_per_core_limit: {g.threads_per_sm}
  core_count: {g.sm_count}
  fpus_per_core: {g.fpus_per_sm}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(g.bandwidth_bytes_s)}
  l2_cache_size: {g.l2_bytes}
  clock_rate_ghz: {g.clock_ghz}
  device_memory_size: {g.memory_bytes}
  shared_memory_per_block_optin: {g.shared_memory_per_block_optin}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: {g.registers_per_sm}
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {version(cudnn)}
runtime_version {version(cuda)}
"""


def topology_devices(target: Target) -> list:
  """Compile-only devices of `target` (a single chip). Needs JAX_PLATFORMS=cpu and the target's plugin
  (jax-cuda13-plugin or libtpu: `pip install 'splatshot_jax[aot]'`); UserError naming it when it is missing."""
  from jax.experimental import topologies  # noqa: PLC0415 (only the AOT route needs it)
  try:
    if target.kind == "gpu":
      topo = topologies.get_topology_desc(platform="cuda", topology_name="aot",
                                          target_config=gpu_target_config(target.gpu), topology="1x1x1")
    else:
      topo = topologies.get_topology_desc(topology_name=target.topology, platform="tpu",
                                          chip_config_name=target.chip_config,
                                          chips_per_host_bounds=target.chips_per_host_bounds, num_slices=1,
                                          wrap=(False, False, False))
  except Exception as e:  # the plugin is absent or not registered: XLA's message says which
    plugin = "jax-cuda13-plugin (with JAX_PLATFORMS=cpu)" if target.kind == "gpu" else "libtpu"
    raise UserError(f"--target={target.name}: no compile-only {target.kind.upper()} devices ({e}); "
                    f"install {plugin}: pip install 'splatshot_jax[aot]' in a separate environment") from e
  return list(topo.devices)
