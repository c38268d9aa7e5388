"""Shared helpers of the PyTorch-oracle parity tests (torch is imported lazily: the test extra)."""

from __future__ import annotations

import numpy as np

# fp32 parity bound on the relative L2 error ‖ours − ref‖ / ‖ref‖ (UNet, ControlNet, IP-Adapter; CLIP and the VAE
# set tighter ones). Measured 2026-12-01 on CPU: UNet 8.5e-7-2.1e-6, ControlNet residuals <= 1.1e-6, IP-Adapter
# resampler <= 3.0e-6 (plus, diffusers names). 3e-5 is ~10x the worst (was 1e-4).
RTOL = 3e-5


def randomize_(model, gen) -> None:
  """Overwrites every parameter of a torch module so no layer stays zero-initialised.

  Weights ~ N(0, 1/fan_in) (keeps activations O(1) through the net), norm scales ~ 1 + 0.1 N,
  biases ~ 0.1 N.
  """
  import torch  # pylint: disable=import-outside-toplevel

  with torch.no_grad():
    for name, p in model.named_parameters():
      r = torch.randn(p.shape, generator=gen)
      if p.ndim >= 2:
        p.copy_(r / np.sqrt(np.prod(p.shape[1:])))
      elif name.endswith("weight"):
        p.copy_(1.0 + 0.1 * r)
      else:
        p.copy_(0.1 * r)


def rel_err(ours, ref) -> tuple[float, float]:
  """(relative L2 error, max abs error) in float64."""
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref)), float(np.abs(ours - ref).max())


def assert_close(ours, ref, what: str, seed: int, rtol: float = RTOL) -> tuple[float, float]:
  """Asserts rel L2 error ≤ rtol; prints both errors (visible with pytest -s) and returns them."""
  ours, ref = np.asarray(ours), np.asarray(ref)
  assert ours.shape == ref.shape, f"{what}: shape {ours.shape} vs {ref.shape} (seed {seed})"
  rel, mx = rel_err(ours, ref)
  print(f"{what}: rel L2 {rel:.2e}, max abs {mx:.2e} (seed {seed})")
  assert rel <= rtol, f"{what}: rel L2 err {rel:.2e} (max abs {mx:.2e}) > {rtol}, seed {seed}"
  return rel, mx


def nchw(x):
  """(B, H, W, C) numpy -> (B, C, H, W) float32 torch tensor."""
  import torch  # pylint: disable=import-outside-toplevel

  return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))


def to_nhwc(t) -> np.ndarray:
  """(B, C, H, W) torch tensor -> (B, H, W, C) numpy."""
  return t.detach().numpy().transpose(0, 2, 3, 1)
