"""Mutation check of the numeric core: do the tests catch realistic one-line bugs?

  python tools/mutation.py                 # all mutations, table + score
  python tools/mutation.py --only M07 M31  # a few
  python tools/mutation.py --list          # show them, run nothing
  python tools/mutation.py --baseline      # first run every guarding test unmutated (must pass)

Each mutation replaces ONE line (matched exactly, after stripping indentation) of a file in a temporary copy of
the repository, then runs its guarding tests there (`pytest -x -q`, PYTHONPATH = the copy, so the copy's
package is imported, not the installed one). The working tree is never modified. Outcomes:
  caught   a guarding test failed (or errored, or timed out);
  missed   every guarding test passed: the suite does not see this bug;
  stale    the target line is no longer in the file (someone edited it): neither caught nor missed;
  ambiguous the target line occurs more than once: fix the mutation.
Score = caught / (caught + missed). Not collected by pytest (lives in tools/, not tests/); not run in CI.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPY_IGNORE = shutil.ignore_patterns(".git", "__pycache__", "*.pyc", ".pytest_cache", "outputs", "runs",
                                     "*.egg-info", "shared", "wandb", ".venv")

CF = "tests/test_closed_form.py"
GS = "tests/test_gsplat_oracle.py"
FI = "tests/test_fit_internals.py"
FS = "tests/test_file_semantics.py"
RD = "tests/test_render.py"
DD = "tests/test_ddim.py"
MT = "tests/test_metrics.py"
VAE = "tests/test_vae_parity.py::test_vae_parity"
PLY = "tests/test_ply.py"


@dataclasses.dataclass(frozen=True)
class Mutation:
  id: str
  path: str
  old: str  # the whole line, without indentation
  new: str
  tests: tuple[str, ...]
  why: str = ""


def M(id, path, old, new, *tests, why=""):
  return Mutation(id, path, old, new, tuple(tests), why)


P = "splatshot_jax/render/project.py"
C = "splatshot_jax/render/composite.py"
FIT = "splatshot_jax/fit.py"
MUTATIONS = [
    # --- projection and SH (shared by the tile and dense renderers) ---
    M("M01", P, "a = cov2d[:, 0, 0] + eps2d", "a = cov2d[:, 0, 0]",
      f"{CF}::test_round_gaussian_conic_on_the_optical_axis", why="low-pass filter on one axis only"),
    M("M02", P, "conics = jnp.stack([c / det_s, -b / det_s, a / det_s], -1)",
      "conics = jnp.stack([a / det_s, -b / det_s, c / det_s], -1)",
      f"{CF}::test_round_gaussian_conic_on_the_optical_axis", why="conic not inverted (a, c swapped)"),
    M("M03", P, "jnp.stack([fx / zs, zero, -fx * tx / (zs * zs)], -1),",
      "jnp.stack([fx / zs, zero, fx * tx / (zs * zs)], -1),", f"{GS}::test_projection_matches_gsplat",
      why="Jacobian sign"),
    M("M04", P, "lim_xp = (camera.width - cx) / fx + 0.3 * camera.width / (2 * fx)",
      "lim_xp = (camera.width - cx) / fx + 0.3 * camera.width / fx", f"{GS}::test_projection_matches_gsplat",
      why="Jacobian clamp 1.3 fov -> 1.6"),
    M("M05", P, "in_front = z > near_plane", "in_front = z > 0", f"{GS}::test_projection_matches_gsplat",
      why="near plane ignored"),
    M("M06", P, "[2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],",
      "[2 * (x * y - w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],",
      f"{GS}::test_projection_matches_gsplat", why="rotation matrix entry sign"),
    M("M07", P, "lam_max = mid + jnp.sqrt(jnp.maximum(mid * mid - sg(det), 0.0))", "lam_max = mid",
      f"{GS}::test_projection_matches_gsplat", why="radius from the mean eigenvalue: elongated splats cut off"),
    M("M08", P, "log_term = 2.0 * jnp.log(jnp.maximum(255.0 * sg(opacities), 1.0))",
      "log_term = jnp.log(jnp.maximum(255.0 * sg(opacities), 1.0))",
      f"{CF}::test_alpha_below_1_over_255_contributes_nothing", f"{GS}::test_projection_matches_gsplat",
      why="radius too small by sqrt 2"),
    M("M09", P, "ALPHA_MIN = 1.0 / 255.0", "ALPHA_MIN = 1.0 / 256.0",
      f"{CF}::test_alpha_below_1_over_255_contributes_nothing", why="skip threshold"),
    M("M10", P, "SH_C1 = 0.4886025119029199", "SH_C1 = 0.4886025119029199 * 2 ** 0.5",
      f"{CF}::test_sh_constants_are_the_published_values", why="degree-1 constant"),
    M("M11", P, "out = out - SH_C1 * y * sh[:, 1] + SH_C1 * z * sh[:, 2] - SH_C1 * x * sh[:, 3]",
      "out = out + SH_C1 * y * sh[:, 1] + SH_C1 * z * sh[:, 2] - SH_C1 * x * sh[:, 3]",
      f"{GS}::test_sh_colours_match_gsplat", why="SH sign (invisible to the tile-vs-dense test)"),
    M("M12", P, "SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,",
      "SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.6307831305050401, -1.0925484305920792,",
      f"{CF}::test_sh_constants_are_the_published_values", why="C2[2] doubled"),
    M("M13", P, "+ SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * sh[:, 12]",
      "+ SH_C3[3] * z * (2 * zz - 3 * xx - yy) * sh[:, 12]",
      f"{CF}::test_sh_basis_is_orthonormal_on_the_sphere", why="degree-3 polynomial"),
    M("M14", P, "+ SH_C3[4] * x * (4 * zz - xx - yy) * sh[:, 13] + SH_C3[5] * z * (xx - yy) * sh[:, 14]",
      "+ SH_C3[4] * x * (4 * zz - xx - yy) * sh[:, 13] + SH_C3[5] * z * (xx - yy) * sh[:, 15]",
      f"{GS}::test_sh_colours_match_gsplat", why="coefficient index (orthonormality cannot see it)"),
    M("M15", P, "return jnp.maximum(eval_sh(sh, dirs / norm, degree) + 0.5, 0.0)",
      "return jnp.maximum(eval_sh(sh, dirs / norm, degree), 0.0) + 0.5",
      f"{GS}::test_sh_colours_match_gsplat", why="clamp before the offset"),
    M("M16", P, "dirs = gaussians.means - camera.center.astype(dtype)",
      "dirs = camera.center.astype(dtype) - gaussians.means",
      f"{GS}::test_sh_colours_match_gsplat", why="view direction reversed"),
    M("M17", "splatshot_jax/gaussians.py", "SH_C0 = 0.28209479177387814  # Y_0^0; colour = SH_C0 * f_dc + 0.5",
      "SH_C0 = 0.2820947917738781 * 2  # Y_0^0; colour = SH_C0 * f_dc + 0.5",
      f"{CF}::test_sh_constants_are_the_published_values", why="colour <-> DC map constant"),
    # --- compositing ---
    M("M18", C, "ALPHA_MAX = 0.99  # 3DGS clamp; keeps 1 − α invertible for the backward walk.",
      "ALPHA_MAX = 0.999  # 3DGS clamp; keeps 1 − α invertible for the backward walk.",
      f"{CF}::test_opaque_gaussian_alpha_is_clamped_to_099_with_zero_gradient", why="gsplat's clamp"),
    M("M19", C, "T_MIN = 1e-4  # early-stop transmittance.", "T_MIN = 1e-3  # early-stop transmittance.",
      f"{CF}::test_early_termination_on_a_stack_of_identical_layers", why="early-stop threshold"),
    M("M20", C, "unclamped = raw < ALPHA_MAX  # min() passes no gradient to the clamped branch",
      "unclamped = raw < 1.0  # min() passes no gradient to the clamped branch",
      f"{CF}::test_opaque_gaussian_alpha_is_clamped_to_099_with_zero_gradient",
      why="gradient through the α clamp (shared with nothing: dense uses autodiff)"),
    M("M21", C, "ok = e.valid[:, None, :] & (power <= 0) & (alpha >= ALPHA_MIN)",
      "ok = e.valid[:, None, :] & (power <= 0)", f"{CF}::test_alpha_below_1_over_255_contributes_nothing",
      why="forward skip rule dropped (tile only)"),
    M("M22", C, "dA = jnp.where(ok, gc * T_k - (gS_k + g_T_term[..., None]) / (1 - a), 0)",
      "dA = jnp.where(ok, gc * T_k - gS_k / (1 - a), 0)",
      f"{GS}::test_render_and_gradients_match_gsplat_oracle", why="alpha-output gradient dropped"),
    M("M23", C, "d_cb = -jnp.sum(d_pow * dx * dy, 1)", "d_cb = jnp.sum(d_pow * dx * dy, 1)",
      f"{GS}::test_render_and_gradients_match_gsplat_oracle", why="conic off-diagonal gradient sign"),
    M("M24", C, "T_incl = T[..., None] * jnp.exp(cum)", "T_incl = jnp.exp(cum)",
      f"{CF}::test_early_termination_on_a_stack_of_identical_layers",
      why="transmittance not carried across chunks"),
    M("M25", "splatshot_jax/render/dense.py", "contrib = jnp.cumprod(1 - a, axis=1) >= T_MIN",
      "contrib = jnp.cumprod(1 - a, axis=1) >= 0", f"{CF}::test_early_termination_on_a_stack_of_identical_layers",
      why="dense reference without early stop"),
    M("M26", "splatshot_jax/render/rasterize.py", "rgb = image[..., 0:3] + T_final[..., None] * bg",
      "rgb = image[..., 0:3] + bg", f"{CF}::test_alpha_below_1_over_255_contributes_nothing",
      f"{CF}::test_early_termination_on_a_stack_of_identical_layers",
      why="background not weighted by T"),
    M("M27", "splatshot_jax/render/tiles.py", "hi = jnp.clip(jnp.floor((center + r) / tile_size) + 1, 0, n)",
      "hi = jnp.clip(jnp.floor((center + r) / tile_size), 0, n)",
      f"{GS}::test_render_and_gradients_match_gsplat_oracle", why="tile range off by one"),
    # --- fit: optimiser and densification statistic ---
    M("M28", FIT, '"scales": cfg.lr_scales * scale,', '"scales": cfg.lr_quats * scale,',
      f"{FI}::test_first_adam_step_moves_each_group_by_its_own_lr", why="LR sent to the wrong group"),
    M("M29", FIT, '"sh0": cfg.lr_sh0 * scale,', '"sh0": cfg.lr_shN * scale,',
      f"{FI}::test_first_adam_step_moves_each_group_by_its_own_lr", why="DC gets the rest-SH LR"),
    M("M30", FIT, "means_lr = cfg.lr_means * cfg.scene_scale * scale", "means_lr = cfg.lr_means * scale",
      f"{FI}::test_first_adam_step_moves_each_group_by_its_own_lr", why="scene scale ignored"),
    M("M31", FIT, "name: optax.set_to_zero() if name in cfg.frozen else optax.adam(lr, eps=1e-15)",
      "name: optax.set_to_zero() if name in cfg.frozen else optax.adam(lr)", f"{FI}::test_adam_eps_is_1e_15",
      why="optax's default eps 1e-8"),
    M("M32", FIT, "means_lr = optax.exponential_decay(means_lr, transition_steps=cfg.schedule_iters or cfg.num_iters,",
      "means_lr = optax.exponential_decay(means_lr, transition_steps=cfg.num_iters,",
      f"{FI}::test_means_lr_exponential_schedule", why="chunked fits decay per chunk"),
    M("M33", FIT, "decay_rate=cfg.means_lr_final)", "decay_rate=cfg.means_lr_final ** 2)",
      f"{FI}::test_means_lr_exponential_schedule", why="wrong final LR"),
    M("M34", FIT, 'sh=jnp.concatenate([p["sh0"], p["shN"]], axis=1),',
      'sh=jnp.concatenate([p["shN"], p["sh0"]], axis=1),',
      f"{FI}::test_fit_applies_per_group_lr_and_accumulates_the_densification_statistic",
      why="SH groups re-joined in the wrong order"),
    M("M35", FIT, "grad_px = lateral * jnp.maximum(z, 1e-6) / camera.K[0, 0]", "grad_px = lateral / camera.K[0, 0]",
      f"{FI}::test_densification_statistic_closed_form", why="depth factor dropped"),
    M("M36", FIT, "return grad_px * camera.width / 2.0, visible", "return grad_px * camera.width, visible",
      f"{FI}::test_densification_statistic_closed_form", why="NDC normalisation"),
    M("M37", FIT, "grad_cam = grad_means @ R.T  # rotate the gradient into camera axes",
      "grad_cam = grad_means  # rotate the gradient into camera axes",
      f"{FI}::test_densification_statistic_closed_form", why="gradient not rotated into camera axes"),
    M("M38", FIT, "carry = (p, state, grad2d_sum + jnp.where(vis, gnorm, 0.0), visible_count + vis, jnp.maximum(overflow, ov))",
      "carry = (p, state, grad2d_sum + jnp.where(vis, gnorm, 0.0), visible_count + 1, jnp.maximum(overflow, ov))",
      f"{FI}::test_fit_applies_per_group_lr_and_accumulates_the_densification_statistic",
      why="visibility count"),
    M("M39", FIT, "loss_scale = view_weights / jnp.max(view_weights)", "loss_scale = view_weights / jnp.sum(view_weights)",
      "tests/test_fit.py::test_view_weight_scales_the_loss", why="loss weight normalisation"),
    M("M40", FIT, "log_scales=(parents.log_scales - np.log(1.6)).astype(np.float32),",
      "log_scales=(parents.log_scales - np.log(2.0)).astype(np.float32),",
      "tests/test_fit.py::test_densify_clone_split_prune", why="split shrink factor"),
    M("M41", FIT, "cap = np.log(2 * prune_opa / (1 - 2 * prune_opa))", "cap = np.log(prune_opa / (1 - prune_opa))",
      "tests/test_fit.py::test_reset_opacities_clamps_and_restarts_their_moments", why="opacity reset level"),
    # --- guidance: view confidence ---
    M("M42", "splatshot_jax/guidance.py", "return jax.nn.softmax(-temperature * l1)",
      "return jax.nn.softmax(temperature * l1)", f"{CF}::test_confidence_weights_are_softmax_of_minus_t_l1",
      why="favours the worst view"),
    M("M43", "splatshot_jax/guidance.py", "l1 = jnp.mean(jnp.abs(renders - images), axis=(1, 2, 3))",
      "l1 = jnp.mean(jnp.square(renders - images), axis=(1, 2, 3))",
      f"{CF}::test_confidence_weights_are_softmax_of_minus_t_l1", why="L2 instead of L1"),
    M("M44", "splatshot_jax/guidance.py", "confidence_temperature: float = 10.0",
      "confidence_temperature: float = 1.0", f"{CF}::test_confidence_weights_are_softmax_of_minus_t_l1",
      why="paper's temperature"),
    M("M45", "splatshot_jax/guidance.py", "grad_eps = -(sigma / alpha) * omega * grad_x0",
      "grad_eps = -(sigma / alpha) * grad_x0",
      "tests/test_guidance.py::test_eps_correction_matches_finite_differences", why="SDI omega dropped"),
    # --- DDIM ---
    M("M46", "splatshot_jax/diffusion/ddim.py",
      "return _torch_linspace_f32(beta_start**0.5, beta_end**0.5, num_train_timesteps) ** 2",
      "return _torch_linspace_f32(beta_start, beta_end, num_train_timesteps)",
      f"{DD}::test_alphas_cumprod_bitwise", why="scaled_linear as linear"),
    M("M47", "splatshot_jax/diffusion/ddim.py", "prev_t = jnp.asarray(t) - schedule.step_ratio",
      "prev_t = jnp.asarray(t) - schedule.step_ratio + 1", f"{DD}::test_trajectory_matches_diffusers",
      why="previous timestep off by one"),
    M("M48", "splatshot_jax/diffusion/ddim.py", "return (z32 - s * out) / a, out", "return (z32 - a * out) / s, out",
      f"{DD}::test_trajectory_matches_diffusers", why="x0 formula swapped"),
    M("M49", "splatshot_jax/diffusion/ddim.py",
      "return (np.arange(0, n) * (T // n)).round()[::-1].astype(np.int64) + steps_offset",
      "return (np.arange(0, n) * (T // n)).round()[::-1].astype(np.int64)", f"{DD}::test_timesteps_exact",
      why="steps_offset ignored"),
    M("M50", "splatshot_jax/diffusion/ddim.py", "t_start = max(n - init_timestep, 0)",
      "t_start = max(n - init_timestep - 1, 0)", f"{DD}::test_paper_setting_timesteps", why="img2img start"),
    M("M51", "splatshot_jax/diffusion/ddim.py", "return jnp.where(t >= 0, ac, schedule.final_alpha_cumprod)",
      "return jnp.where(t > 0, ac, schedule.final_alpha_cumprod)", f"{DD}::test_trajectory_matches_diffusers",
      f"{DD}::test_alpha_bar_at_t0_with_set_alpha_to_one",
      why="t = 0 treated as final"),
    # --- denoiser layers (guarded by the VAE parity test: GroupNorm, ResNet, attention, down/upsampling) ---
    M("M52", "splatshot_jax/diffusion/layers.py", "eps: float = 1e-6", "eps: float = 1e-5",
      "tests/test_layers_eps.py", why="ResNet block's default GroupNorm eps"),
    M("M70", "splatshot_jax/diffusion/vae.py",
      'x = layers.ResnetBlock2D(c, self.groups, eps=1e-6, dtype=self.dtype, name="resnets_0")(x, None)',
      'x = layers.ResnetBlock2D(c, self.groups, eps=1e-5, dtype=self.dtype, name="resnets_0")(x, None)', VAE,
      why="VAE mid-block GroupNorm eps (the issue's example)"),
    M("M53", "splatshot_jax/diffusion/layers.py", "x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))",
      "x = jnp.pad(x, ((0, 0), (1, 0), (1, 0), (0, 0)))", VAE, why="VAE downsample pads top/left"),
    M("M54", "splatshot_jax/diffusion/layers.py", "out = out + x", "out = out + h", VAE,
      why="attention residual adds the normalised input"),
    M("M55", "splatshot_jax/diffusion/layers.py",
      'h = nn.silu(group_norm(self.groups_out or self.groups, self.eps, "norm2", self.dtype)(h))',
      'h = group_norm(self.groups_out or self.groups, self.eps, "norm2", self.dtype)(h)', VAE,
      why="activation dropped"),
    M("M56", "splatshot_jax/diffusion/layers.py",
      'return _conv(self.out_channels, 3, "conv", self.dtype, stride=2, pad=self.padding)(x)',
      'return _conv(self.out_channels, 3, "conv", self.dtype, stride=2, pad=1)(x)', VAE,
      why="downsample padding fixed at 1"),
    M("M57", "splatshot_jax/diffusion/layers.py", "return nn.GroupNorm(num_groups=groups, epsilon=eps, use_fast_variance=False, dtype=dtype, name=name)",
      "return nn.GroupNorm(num_groups=groups, epsilon=eps * 10, use_fast_variance=False, dtype=dtype, name=name)",
      VAE, why="every GroupNorm's eps x10"),
    # --- metrics ---
    M("M58", "splatshot_jax/metrics.py", "return 10.0 * jnp.log10(max_val ** 2 / mse(a, b, mask))",
      "return 20.0 * jnp.log10(max_val ** 2 / mse(a, b, mask))", f"{MT}::test_psnr_l1_closed_form", why="PSNR"),
    M("M59", "splatshot_jax/metrics.py", "l = (1.0 - lambda_dssim) * l1(pred, target, mask)",
      "l = l1(pred, target, mask)", f"{MT}::test_photometric_loss_and_gradient", why="loss weights"),
    M("M60", "splatshot_jax/metrics.py", "g = np.exp(-(x ** 2) / (2.0 * sigma ** 2))", "g = np.exp(-(x ** 2) / sigma ** 2)",
      f"{MT}::test_ssim_matches_reference", why="SSIM window"),
    M("M61", "splatshot_jax/metrics.py", "c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2",
      "c1, c2 = (0.03 * max_val) ** 2, (0.01 * max_val) ** 2", f"{MT}::test_ssim_matches_reference",
      why="SSIM constants swapped"),
    # --- io ---
    M("M62", "splatshot_jax/io/ply.py", "rest = sh[:, 1:, :].transpose(0, 2, 1).reshape(n, -1)  # channel-major, as 3DGS",
      "rest = sh[:, 1:, :].reshape(n, -1)  # channel-major, as 3DGS",
      f"{FS}::test_gaussians_ply_fields_by_meaning", why="f_rest coefficient-major"),
    M("M63", "splatshot_jax/io/ply.py", "rest = rest.reshape(num, 3, k - 1).transpose(0, 2, 1)",
      "rest = rest.reshape(num, k - 1, 3)", f"{FS}::test_read_gaussians_from_an_independent_writer",
      why="reader's f_rest order"),
    M("M64", "splatshot_jax/io/ply.py", 'cols += [(f"rot_{i}", f32(g.quats)[:, i]) for i in range(4)]',
      'cols += [(f"rot_{i}", f32(g.quats)[:, (i + 1) % 4]) for i in range(4)]',
      f"{FS}::test_gaussians_ply_fields_by_meaning", why="quaternion written x, y, z, w"),
    M("M65", "splatshot_jax/io/ply.py", 'cols += [("opacity", f32(g.opacity_logits).reshape(n))]',
      'cols += [("opacity", (1 / (1 + np.exp(-f32(g.opacity_logits)))).reshape(n))]',
      f"{FS}::test_gaussians_ply_fields_by_meaning", why="opacity written activated"),
    M("M66", "splatshot_jax/io/ply.py", "c = np.clip(np.round(c.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)",
      "c = np.clip(c.astype(np.float64) * 255.0, 0, 255).astype(np.uint8)", f"{FS}::test_points_ply_fields",
      why="colours truncated, not rounded"),
    M("M67", "splatshot_jax/io/ply.py", "return c.astype(np.float32) / float(np.iinfo(c.dtype).max)",
      "return c.astype(np.float32) / 255.0", f"{FS}::test_points_ply_fields", why="16-bit colours"),
    M("M68", "splatshot_jax/jobs/outputs.py",
      '"views": [{"viewmat": vm[i].tolist(), "K": K[i].tolist()} for i in range(vm.shape[0])]}',
      '"views": [{"viewmat": vm[i].T.tolist(), "K": K[i].tolist()} for i in range(vm.shape[0])]}',
      f"{FS}::test_cameras_json_is_world_to_camera_opencv", why="cameras.json transposed"),
    M("M69", "splatshot_jax/io/ply.py", 'log_scales=jnp.asarray(col([f"scale_{i}" for i in range(3)])),',
      'log_scales=jnp.asarray(np.log(col([f"scale_{i}" for i in range(3)]))),',
      f"{FS}::test_read_gaussians_from_an_independent_writer", why="scale read as linear"),
    M("M71", FIT, "name: optax.set_to_zero() if name in cfg.frozen else optax.adam(lr, eps=1e-15)",
      "name: optax.adam(lr, eps=1e-15)", f"{FI}::test_frozen_group_gets_no_update_and_others_keep_their_lr",
      why="frozen groups still optimised"),
    M("M72", P, "radius_f = jnp.ceil(jnp.sqrt(log_term * lam_max))", "radius_f = jnp.round(jnp.sqrt(log_term * lam_max))",
      f"{GS}::test_round_opaque_radius_equals_gsplat", why="radius rounded, not ceiled"),
    # --- issue 25: behaviours no test pinned down (self-recurrence, batch resume, evaluation geometry, face
    # alignment, viewer clamp, PLY line endings, int32 key guard, Triton layout on non-square grids) ---
    M("M73", "splatshot_jax/guidance.py", "z = alpha * x0 + sigma * jax.random.normal(key, x0.shape, x0.dtype)",
      "z = x0 + sigma * jax.random.normal(key, x0.shape, x0.dtype)", "tests/test_recurrence.py",
      why="self-recurrence re-noises x0 without its alpha scale"),
    M("M74", "splatshot_jax/guidance.py", "state = state.replace(z=z, model=model, rng=rng)",
      "state = state.replace(z=z, rng=rng)", "tests/test_recurrence.py",
      why="self-recurrence round restarts from the previous step's model, not the refit one"),
    M("M75", "splatshot_jax/jobs/batch.py", "if not is_finished(folder):",
      "if not folder.is_dir():", "tests/test_batch_resume.py",
      why="batch resume skips any existing photo folder"),
    M("M76", "splatshot_jax/jobs/evaluation.py", "near = [k for k, y in enumerate(yaws) if abs(y) <= max_yaw]",
      "near = [k for k, y in enumerate(yaws) if y <= max_yaw]",
      "tests/test_eval_geometry.py::test_headline_identity_is_the_mean_over_the_symmetric_yaw_window",
      why="headline identity window one-sided (every negative yaw counted)"),
    M("M77", "splatshot_jax/jobs/evaluation.py", "axes = np.asarray(cameras.viewmat, np.float64)[:, 2, :3]",
      "axes = np.asarray(cameras.viewmat, np.float64)[:, :3, 2]",
      "tests/test_eval_geometry.py::test_neighbour_pairs_are_nearest_optical_axes_on_a_multi_row_rig",
      why="neighbour views from the rotation's column, not the optical axis (its row)"),
    M("M78", "splatshot_jax/face/align.py",
      "return np.stack([lm[list(RIGHT_EYE)].mean(0), lm[list(LEFT_EYE)].mean(0), lm[30], lm[48], lm[54]])",
      "return np.stack([lm[list(RIGHT_EYE)].mean(0), lm[list(LEFT_EYE)].mean(0), lm[30], lm[54], lm[48]])",
      "tests/test_face_points.py", why="five-point order: mouth corners swapped"),
    M("M79", "splatshot_jax/face/align.py",
      "return np.stack([lm[list(RIGHT_EYE)].mean(0), lm[list(LEFT_EYE)].mean(0), lm[30], lm[48], lm[54]])",
      "return np.stack([lm[list(RIGHT_EYE)].mean(0), lm[list(LEFT_EYE)].mean(0), lm[33], lm[48], lm[54]])",
      "tests/test_face_points.py", why="five-point index: nose base (33) for the nose tip (30)"),
    M("M80", "splatshot_jax/viewer/viewer.js", "float alpha = min(0.99, v_conic.w * exp(power));",
      "float alpha = min(0.999, v_conic.w * exp(power));", "tests/test_viewer_alpha.py",
      why="viewer page's alpha clamp differs from the renderer's"),
    M("M81", "splatshot_jax/io/ply.py", r'm = re.search(rb"end_header[ \t]*\r?\n", data)',
      r'm = re.search(rb"end_header[ \t]*\n", data)', "tests/test_ply_headers.py",
      why="PLY header with CRLF line endings not recognised"),
    M("M82", "splatshot_jax/render/tiles.py", "return (num_tiles + 1) * n < 2**31", "return num_tiles * n < 2**31",
      "tests/test_key_guard.py", why="int32 key guard forgets the sentinel tile"),
    M("M83", "splatshot_jax/render/tiles.py", "return (num_tiles + 1) * n < 2**31", "return (num_tiles + 1) * n < 2**32",
      "tests/test_key_guard.py", why="int32 key guard at the unsigned limit"),
    M("M84", "splatshot_jax/render/composite_triton.py",
      "tiles_x, tiles_y = tile_grid(cfg.width, cfg.height, cfg.tile_size)",
      "tiles_y, tiles_x = tile_grid(cfg.width, cfg.height, cfg.tile_size)", "tests/test_triton_layout.py",
      why="Triton launch: tile rows taken for columns (TILES_X = tiles_y)"),
]


def _apply(copy: Path, m: Mutation) -> str | None:
  """Mutates the copy in place; returns None on success or 'stale'/'ambiguous'."""
  f = copy / m.path
  if not f.exists():
    return "stale"
  lines = f.read_text().split("\n")
  hits = [i for i, line in enumerate(lines) if line.strip() == m.old.strip()]
  if not hits:
    return "stale"
  if len(hits) > 1:
    return "ambiguous"
  i = hits[0]
  indent = lines[i][:len(lines[i]) - len(lines[i].lstrip())]
  lines[i] = indent + m.new.strip()
  f.write_text("\n".join(lines))
  return None


def _pytest(copy: Path, tests, timeout: float) -> tuple[str, float, str]:
  env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")
  cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "", *tests]
  t0 = time.time()
  try:
    r = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return "timeout", time.time() - t0, ""
  tail = (r.stdout + r.stderr).strip().splitlines()
  return ("pass" if r.returncode == 0 else "fail"), time.time() - t0, tail[-1] if tail else ""


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--only", nargs="*", help="mutation ids to run")
  ap.add_argument("--list", action="store_true", help="print the mutations and exit")
  ap.add_argument("--check", action="store_true", help="only report stale/ambiguous target lines")
  ap.add_argument("--baseline", action="store_true", help="run every guarding test unmutated first")
  ap.add_argument("--timeout", type=float, default=900.0, help="seconds per mutation (a timeout counts as caught)")
  args = ap.parse_args(argv)
  muts = [m for m in MUTATIONS if not args.only or m.id in args.only]
  if args.list:
    for m in muts:
      print(f"{m.id} {m.path}: {m.why}\n    - {m.old}\n    + {m.new}\n    guards: {' '.join(m.tests)}")
    return 0

  with tempfile.TemporaryDirectory(prefix="splatshot_mut_") as tmp:
    copy = Path(tmp) / "repo"
    shutil.copytree(ROOT, copy, ignore=COPY_IGNORE, symlinks=True)
    check = subprocess.run([sys.executable, "-c", "import splatshot_jax; print(splatshot_jax.__file__)"],
                           cwd=copy, env=dict(os.environ, PYTHONPATH=str(copy)), capture_output=True, text=True)
    if not check.stdout.strip().startswith(str(copy)):
      print(f"the copy's package is not the one imported: {check.stdout.strip()} {check.stderr[-300:]}")
      return 2
    if args.check:
      for m in muts:
        f = copy / m.path
        text = f.read_text() if f.exists() else None
        print(m.id, _apply(copy, m) or "ok", [t for t in m.tests if not (copy / t.split("::")[0]).exists()] or "")
        if text is not None:
          f.write_text(text)
      return 0
    if args.baseline:
      guards = sorted({t for m in muts for t in m.tests})
      status, secs, tail = _pytest(copy, guards, args.timeout * 4)
      print(f"baseline ({len(guards)} guarding tests, unmutated): {status} in {secs:.0f}s: {tail}")
      if status != "pass":
        return 2
    rows = []
    for m in muts:
      original = {}
      f = copy / m.path
      if f.exists():
        original[f] = f.read_text()
      err = _apply(copy, m)
      if err:
        rows.append((m, err, 0.0, ""))
      else:
        status, secs, tail = _pytest(copy, m.tests, args.timeout)
        rows.append((m, "missed" if status == "pass" else "caught", secs, tail if status == "pass" else status))
      for path, text in original.items():
        path.write_text(text)
      print(f"{m.id} {rows[-1][1]:9s} {rows[-1][2]:6.0f}s  {m.path}: {m.why}", flush=True)

  print("\n| id | file | mutation | outcome | s |\n|---|---|---|---|---|")
  for m, outcome, secs, _ in rows:
    print(f"| {m.id} | {m.path.split('/')[-1]} | {m.why} | {outcome} | {secs:.0f} |")
  caught = sum(r[1] == "caught" for r in rows)
  missed = [r[0].id for r in rows if r[1] == "missed"]
  other = [f"{r[0].id}:{r[1]}" for r in rows if r[1] in ("stale", "ambiguous")]
  scored = caught + len(missed)
  print(f"\nscore: {caught}/{scored} caught = {100.0 * caught / max(scored, 1):.1f}%; missed: {missed or 'none'}; "
        f"stale/ambiguous (not scored): {other or 'none'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
