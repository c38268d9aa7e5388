"""Stable Diffusion as a SplatShot prior: `eps`, `encode`, `decode` over V views (`splatshot_jax.priors.Prior`).

`StableDiffusion` is a pytree (weights are leaves, settings static), so the SplatShot step jits over it:

  prior, conditioner = loading.load_stable_diffusion("sd15", vae="sd-vae-ft-mse",
      controlnets=["control_v11p_sd15_openpose", "control_v11p_sd15_seg"],
      ip_adapter="IP-Adapter/models/ip-adapter-plus-face_sd15.bin",
      image_encoder="IP-Adapter/models/image_encoder", dtype="float16")
  cond = conditioner.make_cond(prompt, negative_prompt, photo, controls=(pose_maps, seg_maps),
                               control_scales=(0.2, 0.6), guidance_scale=4.0, ip_scale=0.8)
  z = prior.encode(renders, rng)                        # (V, H/8, W/8, 4)
  eps = prior.eps(z_t, t, cond)                          # CFG, 2 ControlNets, IP tokens: one call for all V views
  images = prior.decode(x0)                              # (V, H, W, 3) in [0, 1]; jax.vjp keeps only x0

What runs where: `eps` does, for a chunk of views at once, batch [uncond; cond] (2C) -> every ControlNet on the
2C batch (the control image repeated, as diffusers with guess_mode off) -> summed, scaled residuals -> UNet with the
text tokens and, per half, the uncond / photo IP tokens -> u + g (c - u). Chunks run under `lax.map`, so peak memory
is one chunk's; `view_chunk` sets the size.

The text and image encoders are only needed once per run, not per step, so they live in a separate
`SDConditioner` (not a pytree, not passed into the jitted step).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from splatshot_jax.diffusion import controlnet as cn_lib
from splatshot_jax.diffusion import layers
from splatshot_jax.diffusion import unet as unet_lib
from splatshot_jax.diffusion import vae as vae_lib

Pytree = Any


# ---------------------------------------------------------------------------------------------
# Conditioning


@struct.dataclass
class SDCond:
  """Per-view conditioning of the SD prior. Arrays have a leading V axis (one row per view).

  Attributes:
    text: (V, L, D) float, prompt embeddings (CLIP last_hidden_state; L = 77, D = 768 for SD-1.5).
    uncond_text: (V, L, D) float, negative-prompt embeddings (the CFG "uncond" branch).
    controls: tuple of N arrays (V, 8h, 8w, 3) float32 in [0, 1], one per ControlNet, RGB, NHWC, the size of
      the decoded image (8x the latent).
    ip: (V, K, D) float IP-Adapter tokens of the conditioning image (the photo), or None without IP-Adapter.
    uncond_ip: (V, K, D) float IP tokens of the uncond branch (diffusers: the projection of a zero image's CLIP
      features), or None.
    guidance_scale: static float, CFG weight g (paper 4.0); g <= 1 runs the cond branch only (diffusers' rule).
    control_scales: static tuple of N floats, one per ControlNet (paper (0.2, 0.6)).
    ip_scale: static float, weight of the image cross-attention (paper 0.8).
  """

  text: jax.Array
  uncond_text: jax.Array
  controls: tuple = ()
  ip: jax.Array | None = None
  uncond_ip: jax.Array | None = None
  guidance_scale: float = struct.field(pytree_node=False, default=4.0)
  control_scales: tuple = struct.field(pytree_node=False, default=())
  ip_scale: float = struct.field(pytree_node=False, default=0.8)

  @property
  def num_views(self) -> int:
    return self.text.shape[0]


def broadcast_cond(cond: SDCond, num_views: int) -> SDCond:
  """Repeats a cond whose arrays have a leading axis of 1 to `num_views` rows (others unchanged)."""
  def rep(x):
    return jnp.broadcast_to(x, (num_views,) + x.shape[1:]) if x.shape[0] == 1 else x
  return jax.tree.map(rep, cond)


# ---------------------------------------------------------------------------------------------
# Chunked map over views


def chunked_map(fn: Callable[..., Pytree], chunk: int, *args: Pytree) -> Pytree:
  """fn(*args) evaluated `chunk` views at a time under `lax.map` (every leaf of args has a leading V axis).

  V need not divide by `chunk`: the last chunk is padded by repeating the last view (finite values, so no NaN
  can leak into gradients) and the padding is dropped from the output. chunk >= V calls fn once, unmapped.
  """
  v = jax.tree.leaves(args)[0].shape[0]
  if chunk <= 0 or chunk >= v:
    return fn(*args)
  n = -(-v // chunk)
  pad = n * chunk - v

  def split(x):
    if pad:
      x = jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)], axis=0)
    return x.reshape((n, chunk) + x.shape[1:])

  out = jax.lax.map(lambda a: fn(*a), jax.tree.map(split, args))
  return jax.tree.map(lambda y: y.reshape((n * chunk,) + y.shape[2:])[:v], out)


# ---------------------------------------------------------------------------------------------
# The prior


@dataclasses.dataclass(frozen=True)
class SDSpec:
  """Static description of a `StableDiffusion` (hashable; part of the jit cache key).

  Attributes:
    unet: the UNet config; vae: the VAE config; controlnets: one config per ControlNet (order = cond.controls).
    with_ip_adapter: the UNet has to_k_ip / to_v_ip.
    dtype: compute dtype of every module (params are stored in it too).
    view_chunk: views per `eps` chunk (the UNet batch is 2x this with CFG).
    decode_chunk: views per VAE encode / decode / decode-VJP chunk.
    clip_decoded: clamp decoded images to [0, 1] as diffusers' postprocess does (gradient 0 outside).
  """

  unet: unet_lib.UNetConfig
  vae: vae_lib.VAEConfig
  controlnets: tuple = ()
  with_ip_adapter: bool = False
  dtype: Any = jnp.float32
  view_chunk: int = 8
  decode_chunk: int = 4
  clip_decoded: bool = True

  @property
  def vae_factor(self) -> int:
    """Pixels per latent along each axis (8 for SD)."""
    return 2 ** (len(self.vae.block_out_channels) - 1)


@struct.dataclass
class StableDiffusion:
  """The SD-1.x/2.x prior (UNet + N ControlNets + IP-Adapter-ready UNet + VAE) over a params pytree.

  Attributes:
    params: {"unet": ..., "vae": ..., "controlnets": (p_1, ..., p_N)}, arrays in spec.dtype.
    spec: static `SDSpec`.
    schedule: a `ddim.DDIMSchedule` or None (kept for convenience; eps/encode/decode do not read it).
  """

  params: dict
  spec: SDSpec = struct.field(pytree_node=False)
  schedule: Any = None

  # -- modules (cheap to rebuild; not stored so the struct stays a simple pytree) --
  @property
  def unet(self) -> unet_lib.UNet2DConditionModel:
    return unet_lib.UNet2DConditionModel(self.spec.unet, with_ip_adapter=self.spec.with_ip_adapter,
                                         dtype=self.spec.dtype)

  @property
  def vae(self) -> vae_lib.AutoencoderKL:
    return vae_lib.AutoencoderKL(self.spec.vae, dtype=self.spec.dtype)

  @property
  def controlnets(self) -> tuple:
    return tuple(cn_lib.ControlNetModel(c, dtype=self.spec.dtype) for c in self.spec.controlnets)

  # -- eps --
  def eps_batch(self, z: jax.Array, t: jax.Array, cond: SDCond) -> jax.Array:
    """`eps` for one batch of views, unchunked. Same shapes as `eps`."""
    cfg_on = cond.guidance_scale > 1.0
    if len(cond.controls) != len(self.spec.controlnets):
      raise ValueError(f"cond has {len(cond.controls)} control images, the prior {len(self.spec.controlnets)} "
                       "ControlNets")
    if len(cond.control_scales) != len(self.spec.controlnets):
      raise ValueError(f"cond.control_scales has {len(cond.control_scales)} entries, the prior "
                       f"{len(self.spec.controlnets)} ControlNets")
    if cfg_on:
      both = lambda u, c: jnp.concatenate([u, c], axis=0)  # diffusers order: [uncond; cond]
      zz, text = both(z, z), both(cond.uncond_text, cond.text)
      controls = tuple(both(c, c) for c in cond.controls)
      ip = None if cond.ip is None else both(cond.uncond_ip, cond.ip)
    else:
      zz, text, controls, ip = z, cond.text, cond.controls, cond.ip
    dt = self.spec.dtype
    zz, text = zz.astype(dt), text.astype(dt)
    down = mid = None
    if self.spec.controlnets:
      nets = [(m, p, c.astype(dt), s) for m, p, c, s in
              zip(self.controlnets, self.params["controlnets"], controls, cond.control_scales)]
      down, mid = cn_lib.multi_controlnet_residuals(nets, zz, t, text)
    kw = {}
    if ip is not None:
      if not self.spec.with_ip_adapter:
        raise ValueError("cond.ip is set but the prior was loaded without an IP-Adapter")
      kw = dict(ip_hidden_states=ip.astype(dt), ip_scale=cond.ip_scale)
    out = self.unet.apply({"params": self.params["unet"]}, zz, t, text, down, mid, **kw).astype(jnp.float32)
    if not cfg_on:
      return out
    u, c = jnp.split(out, 2, axis=0)
    return u + cond.guidance_scale * (c - u)

  def eps(self, z: jax.Array, t: jax.Array, cond: SDCond) -> jax.Array:
    """Classifier-free-guided model output for V views (ε for SD-1.5; v for v-prediction checkpoints).

    Args:
      z: (V, h, w, 4) float32 noisy latents (diffusion space: VAE latent x scaling_factor).
      t: () int32 train timestep (the same for all views).
      cond: `SDCond` with V rows.
    Returns:
      (V, h, w, 4) float32, u + g (c - u) (or c alone when g <= 1).
    """
    return chunked_map(lambda zc, cc: self.eps_batch(zc, t, cc), self.spec.view_chunk, z, cond)

  # -- VAE --
  def encode_moments(self, images: jax.Array) -> vae_lib.DiagonalGaussian:
    """(V, H, W, 3) images in [0, 1] -> the VAE posterior (unscaled latent space), chunked."""
    def one(x):
      d = self.vae.apply({"params": self.params["vae"]}, (2.0 * x - 1.0).astype(self.spec.dtype),
                         method=vae_lib.AutoencoderKL.encode)
      return d.mean.astype(jnp.float32), d.logvar.astype(jnp.float32)
    mean, logvar = chunked_map(one, self.spec.decode_chunk, images)
    return vae_lib.DiagonalGaussian(mean, logvar)

  def encode(self, images: jax.Array, rng: jax.Array | None = None,
             noise: jax.Array | None = None) -> jax.Array:
    """Images -> diffusion-space latents (z - shift) x scaling_factor.

    Args:
      images: (V, H, W, 3) float32 in [0, 1]; H, W multiples of 8.
      rng: if given, a posterior sample (the official code's `latent_dist.sample()`), else the mean.
      noise: (V, H/8, W/8, 4) explicit standard-normal draw for the sample (overrides rng; for parity tests).
    Returns:
      (V, H/8, W/8, 4) float32.
    """
    d = self.encode_moments(images)
    if noise is None and rng is not None:
      noise = jax.random.normal(rng, d.mean.shape, jnp.float32)
    z = d.mean if noise is None else d.mean + d.std * noise
    cfg = self.spec.vae
    return (z - (cfg.shift_factor or 0.0)) * cfg.scaling_factor

  def decode(self, latents: jax.Array) -> jax.Array:
    """(V, h, w, 4) diffusion-space latents -> (V, 8h, 8w, 3) float32 images in [0, 1].

    Differentiable w.r.t. latents through a custom VJP that keeps only the latents as residual and recomputes
    the decoder chunk by chunk in the backward pass (`decode_vjp`), so `jax.vjp(prior.decode, x0)` held across
    the refit costs (V, h, w, 4) floats, not the decoder's activations. The VAE weights get a zero cotangent
    (they are not trained here).
    """
    return _decode(self.spec, self.params["vae"], latents)

  def decode_vjp(self, latents: jax.Array, cotangent: jax.Array) -> jax.Array:
    """(∂ decode / ∂ latents)^T · cotangent, chunked over views, with per-block remat inside a chunk.

    Args:
      latents: (V, h, w, 4) float32, where the decoder is linearised.
      cotangent: (V, 8h, 8w, 3) float32, dL/d(image).
    Returns:
      (V, h, w, 4) float32 dL/d(latents).
    """
    return _decode_vjp(self.spec, self.params["vae"], latents, cotangent)


def _decode_chunk(spec: SDSpec, vae_params: Pytree, latents: jax.Array) -> jax.Array:
  """(C, h, w, 4) diffusion-space latents -> (C, 8h, 8w, 3) float32 in [0, 1] (clamped if spec.clip_decoded)."""
  x = remat_decode(spec.vae, vae_params, latents, spec.dtype).astype(jnp.float32)
  x = x / 2.0 + 0.5
  return jnp.clip(x, 0.0, 1.0) if spec.clip_decoded else x


def _decode_vjp(spec: SDSpec, vae_params: Pytree, latents: jax.Array, cotangent: jax.Array) -> jax.Array:
  def one(zc, gc):
    _, pullback = jax.vjp(lambda z: _decode_chunk(spec, vae_params, z), zc)
    return pullback(gc.astype(jnp.float32))[0].astype(jnp.float32)
  return chunked_map(one, spec.decode_chunk, latents, cotangent)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _decode(spec: SDSpec, vae_params: Pytree, latents: jax.Array) -> jax.Array:
  return chunked_map(lambda z: _decode_chunk(spec, vae_params, z), spec.decode_chunk, latents)


def _decode_fwd(spec, vae_params, latents):
  return _decode(spec, vae_params, latents), (vae_params, latents)


def _decode_bwd(spec, res, g):
  vae_params, latents = res
  # None: a symbolic zero for the weights, so nothing the size of the VAE is allocated.
  return None, _decode_vjp(spec, vae_params, latents, g).astype(latents.dtype)


_decode.defvjp(_decode_fwd, _decode_bwd)


def remat_decode(cfg: vae_lib.VAEConfig, params: Pytree, latents: jax.Array, dtype: Any) -> jax.Array:
  """`vae.decode_latents` split at the decoder's blocks, each under `jax.checkpoint`.

  Same math and params as `AutoencoderKL.decode` (tested equal); the split lets reverse mode keep only the
  activations at block boundaries and recompute one block at a time, so a 512x512 decode's backward needs about
  one up-block's activations instead of the whole decoder's.

  Args:
    latents: (B, h, w, latent) diffusion-space latents.
  Returns:
    (B, 8h, 8w, 3) in `dtype`, nominally [-1, 1].
  """
  z = (latents / cfg.scaling_factor + (cfg.shift_factor or 0.0)).astype(dtype)
  if cfg.use_post_quant_conv:
    z = layers._conv(cfg.latent_channels, 1, None, dtype).apply({"params": params["post_quant_conv"]}, z)
  p = params["decoder"]
  ch = cfg.block_out_channels[::-1]
  x = layers._conv(ch[0], 3, None, dtype).apply({"params": p["conv_in"]}, z)
  mid = vae_lib.UNetMidBlock2D(cfg.norm_num_groups, cfg.mid_block_add_attention, dtype=dtype)
  x = jax.checkpoint(lambda pp, h: mid.apply({"params": pp}, h))(p["mid_block"], x)
  for i, c in enumerate(ch):
    blk = vae_lib.UpDecoderBlock2D(c, cfg.layers_per_block + 1, cfg.norm_num_groups, i < len(ch) - 1,
                                   dtype=dtype)
    x = jax.checkpoint(lambda pp, h, blk=blk: blk.apply({"params": pp}, h))(p[f"up_blocks_{i}"], x)

  def tail(pp, h):
    h = layers.group_norm(cfg.norm_num_groups, 1e-6, None, dtype).apply({"params": pp["conv_norm_out"]}, h)
    return layers._conv(cfg.out_channels, 3, None, dtype).apply({"params": pp["conv_out"]}, jax.nn.silu(h))

  return jax.checkpoint(tail)(p, x)


# ---------------------------------------------------------------------------------------------
# Conditioning encoders (run once per avatar, outside the jitted step)


@dataclasses.dataclass(frozen=True, eq=False)
class SDConditioner:
  """Prompt and IP-Adapter image encoders; builds the `SDCond` the prior's `eps` takes.

  Attributes:
    tokenizer: `tokenizer.CLIPTokenizer`.
    text_model, text_params: `clip.CLIPTextModel` and its params.
    image_model, image_params: `clip.CLIPVisionModelWithProjection` and params, or None (no IP-Adapter).
    image_proj, image_proj_params: the IP-Adapter projection (Plus: `IPAdapterPlusImageProjection` over the
      penultimate CLIP hidden states; base: `ImageProjection` over image_embeds), or None.
  """

  tokenizer: Any
  text_model: Any
  text_params: Any
  image_model: Any = None
  image_params: Any = None
  image_proj: Any = None
  image_proj_params: Any = None

  @property
  def is_plus(self) -> bool:
    """IP-Adapter Plus (Resampler over hidden_states[-2]) rather than the base projection of image_embeds."""
    from splatshot_jax.diffusion import ip_adapter
    return isinstance(self.image_proj, ip_adapter.IPAdapterPlusImageProjection)

  def encode_prompt(self, prompts: str | Sequence[str]) -> jax.Array:
    """Prompts -> (B, 77, D) float32 CLIP last_hidden_state (no attention mask, as SD pipelines)."""
    ids = jnp.asarray(self.tokenizer(prompts))
    out = self.text_model.apply({"params": self.text_params}, ids)
    return out.last_hidden_state.astype(jnp.float32)

  def _image_features(self, pixels: jax.Array) -> jax.Array:
    out = self.image_model.apply({"params": self.image_params}, pixels.astype(self.image_model.dtype),
                                 output_hidden_states=self.is_plus)
    return out.hidden_states[-2] if self.is_plus else out.image_embeds

  def preprocess(self, photo: Any) -> np.ndarray:
    """A photo (PIL image, (H, W, 3) uint8 or float in [0, 1]) -> (1, S, S, 3) CLIP pixels (CLIPImageProcessor)."""
    from splatshot_jax.diffusion import clip
    s = self.image_model.config.image_size
    return clip.preprocess_image(photo, size=s, crop_size=s)[None]

  def ip_tokens(self, photo: Any) -> jax.Array:
    """IP-Adapter tokens of one photo: (1, K, D) float32 (Plus: K = num_queries, 16 for plus-face).

    The photo is preprocessed like CLIPImageProcessor (resize shortest side, centre crop, CLIP mean/std), then
    CLIP vision hidden_states[-2] (Plus) or image_embeds (base) -> the projection.
    """
    if self.image_model is None:
      raise ValueError("ip_tokens: this conditioner was loaded without an IP-Adapter / image encoder.")
    feats = self._image_features(jnp.asarray(self.preprocess(photo)))
    return self.image_proj.apply({"params": self.image_proj_params}, feats).astype(jnp.float32)

  def uncond_ip_tokens(self) -> jax.Array:
    """(1, K, D) tokens of the CFG uncond branch, as diffusers: Plus projects the CLIP features of an all-zero
    pixel tensor; base projects a zero image_embeds vector."""
    s = self.image_model.config.image_size
    if self.is_plus:
      feats = self._image_features(jnp.zeros((1, s, s, 3), jnp.float32))
    else:
      feats = jnp.zeros((1, self.image_model.config.projection_dim), self.image_model.dtype)
    return self.image_proj.apply({"params": self.image_proj_params}, feats).astype(jnp.float32)

  def make_cond(
      self,
      num_views: int,
      prompt: str,
      negative_prompt: str = "",
      *,
      controls: Sequence[jax.Array] = (),
      control_scales: Sequence[float] = (),
      guidance_scale: float = 4.0,
      photo: Any = None,
      ip_scale: float = 0.8,
  ) -> SDCond:
    """The `SDCond` for V views with one prompt / negative prompt / IP photo shared by all views.

    Args:
      num_views: V.
      prompt, negative_prompt: text (paper: "high quality portrait, detailed face, photorealistic" /
        "blurry, low quality, distorted, deformed").
      controls: N arrays (V, H, W, 3) float in [0, 1], one per ControlNet (in the prior's ControlNet order).
      control_scales: N floats (paper (0.2, 0.6)).
      guidance_scale: CFG weight (paper 4.0).
      photo: the IP-Adapter image (PIL / uint8 / float [0, 1] array), or None (no IP tokens).
      ip_scale: IP-Adapter scale (paper 0.8).
    """
    text = self.encode_prompt([prompt, negative_prompt])
    ip = uncond_ip = None
    if photo is not None:
      ip, uncond_ip = self.ip_tokens(photo), self.uncond_ip_tokens()
    rep = lambda x: None if x is None else jnp.broadcast_to(x, (num_views,) + x.shape[1:])
    for i, c in enumerate(controls):
      if c.shape[0] != num_views or c.ndim != 4 or c.shape[-1] != 3:
        raise ValueError(f"controls[{i}] has shape {c.shape}; expected ({num_views}, H, W, 3) in [0, 1].")
    return SDCond(text=rep(text[:1]), uncond_text=rep(text[1:]),
                  controls=tuple(jnp.asarray(c, jnp.float32) for c in controls),
                  ip=rep(ip), uncond_ip=rep(uncond_ip), guidance_scale=float(guidance_scale),
                  control_scales=tuple(float(s) for s in control_scales), ip_scale=float(ip_scale))
