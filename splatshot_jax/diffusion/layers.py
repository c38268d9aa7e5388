"""Building blocks shared by the SD UNet, ControlNet and VAE (Flax linen, NHWC).

Every module names its submodules exactly as the diffusers (PyTorch) module does, with list
members named `name_<i>`, so `convert.torch_to_flax` maps a diffusers checkpoint onto our params
with no per-model key table (`to_out.0` -> `to_out_0`, `ff.net.0.proj` -> `net_0/proj`, ...).

Layout: activations are NHWC `(B, H, W, C)` everywhere in this package; token sequences are
`(B, L, D)`. Only the public model entry points (`UNet2DConditionModel`, `ControlNetModel`,
`AutoencoderKL`) are called by users, and they take NHWC as well.

Numerics follow diffusers: GroupNorm/LayerNorm use the two-pass variance (as torch), GELU in
GEGLU is the exact erf form, nearest upsampling indexes like `F.interpolate(mode="nearest")`.

Example:
  import jax, jax.numpy as jnp
  from splatshot_jax.diffusion import layers
  blk = layers.Transformer2DModel(heads=2, head_dim=8, num_layers=1, norm_groups=8)
  x = jnp.zeros((1, 8, 8, 16)); ctx = jnp.zeros((1, 7, 32))
  params = blk.init(jax.random.PRNGKey(0), x, ctx)["params"]
  y = blk.apply({"params": params}, x, ctx)          # (1, 8, 8, 16)
  emb = layers.timestep_embedding(jnp.array([10.0]), 32, flip_sin_to_cos=True, freq_shift=0)
  res = layers.ResnetBlock2D(out_channels=32, groups=8)
  p = res.init(jax.random.PRNGKey(0), x, None)["params"]   # no temb -> no time_emb_proj
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from splatshot_jax.device import platform

Dtype = Any


def timestep_embedding(
    timesteps: jax.Array,
    dim: int,
    *,
    flip_sin_to_cos: bool,
    freq_shift: float,
    max_period: float = 10000.0,
) -> jax.Array:
  """Sinusoidal timestep features, as diffusers' `get_timestep_embedding`.

  Args:
    timesteps: (B,) int or float timesteps.
    dim: feature size D.
    flip_sin_to_cos: output [cos, sin] instead of [sin, cos] (SD uses True).
    freq_shift: `downscale_freq_shift`; the exponent divides by (D/2 - freq_shift) (SD: 0).
  Returns:
    (B, D) float32.
  """
  half = dim // 2
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
  emb = timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
  emb = jnp.concatenate([jnp.sin(emb), jnp.cos(emb)], axis=-1)
  if flip_sin_to_cos:
    emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
  if dim % 2 == 1:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def _conv(features: int, kernel: int, name: Optional[str], dtype: Dtype, stride: int = 1, pad: int | None = None):
  """A torch-style Conv2d: explicit symmetric padding (k-1)//2 unless given (name None in setup)."""
  pad = (kernel - 1) // 2 if pad is None else pad
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), dtype=dtype, name=name)


def group_norm(groups: int, eps: float, name: str, dtype: Dtype) -> nn.GroupNorm:
  # use_fast_variance=False: E[(x-mu)^2] as torch does; E[x^2]-mu^2 loses ~1e-4 on large activations.
  return nn.GroupNorm(num_groups=groups, epsilon=eps, use_fast_variance=False, dtype=dtype, name=name)


def layer_norm(eps: float, name: str, dtype: Dtype) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=eps, use_fast_variance=False, dtype=dtype, name=name)


class TimestepEmbedding(nn.Module):
  """linear_1 -> SiLU -> linear_2 (diffusers `TimestepEmbedding`, act_fn='silu')."""
  time_embed_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, t_feat: jax.Array) -> jax.Array:
    """t_feat: (B, D_in) sinusoidal features -> (B, time_embed_dim)."""
    h = nn.Dense(self.time_embed_dim, dtype=self.dtype, name="linear_1")(t_feat)
    return nn.Dense(self.time_embed_dim, dtype=self.dtype, name="linear_2")(nn.silu(h))


class ResnetBlock2D(nn.Module):
  """diffusers `ResnetBlock2D` (pre-norm, time_embedding_norm='default', SiLU).

  `time_emb_proj` exists only if a temb is passed (UNet); the VAE passes None. A 1x1
  `conv_shortcut` is created when input and output channels differ (diffusers' use_in_shortcut).
  """
  out_channels: int
  groups: int = 32
  groups_out: Optional[int] = None
  eps: float = 1e-6
  output_scale_factor: float = 1.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, temb: Optional[jax.Array]) -> jax.Array:
    """x: (B, H, W, Cin); temb: (B, T) or None -> (B, H, W, out_channels)."""
    h = nn.silu(group_norm(self.groups, self.eps, "norm1", self.dtype)(x))
    h = _conv(self.out_channels, 3, "conv1", self.dtype)(h)
    if temb is not None:
      t = nn.Dense(self.out_channels, dtype=self.dtype, name="time_emb_proj")(nn.silu(temb))
      h = h + t[:, None, None, :]
    h = nn.silu(group_norm(self.groups_out or self.groups, self.eps, "norm2", self.dtype)(h))
    h = _conv(self.out_channels, 3, "conv2", self.dtype)(h)
    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, 1, "conv_shortcut", self.dtype)(x)
    return (x + h) / self.output_scale_factor


class Downsample2D(nn.Module):
  """Stride-2 3x3 conv. padding=1 (UNet); padding=0 pads only bottom/right by 1 (VAE encoder)."""
  out_channels: int
  padding: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), out_channels)."""
    if self.padding == 0:
      x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return _conv(self.out_channels, 3, "conv", self.dtype, stride=2, pad=self.padding)(x)


def upsample_nearest(x: jax.Array, size: Optional[Sequence[int]] = None) -> jax.Array:
  """Nearest-neighbour resize like torch `F.interpolate(mode='nearest')`.

  x: (B, H, W, C); size: (H', W') or None for exactly 2x. Returns (B, H', W', C).
  torch picks source index floor(dst * H / H'), which for 2x is a plain repeat.
  """
  h, w = x.shape[1], x.shape[2]
  if size is None or (size[0] == 2 * h and size[1] == 2 * w):
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  iy = jnp.floor(jnp.arange(size[0]) * (h / size[0])).astype(jnp.int32)
  ix = jnp.floor(jnp.arange(size[1]) * (w / size[1])).astype(jnp.int32)
  return x[:, iy][:, :, ix]


class Upsample2D(nn.Module):
  """Nearest 2x (or to `size`) followed by a 3x3 conv."""
  out_channels: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, size: Optional[Sequence[int]] = None) -> jax.Array:
    """x: (B, H, W, C) -> (B, 2H, 2W, out_channels) (or `size`)."""
    return _conv(self.out_channels, 3, "conv", self.dtype)(upsample_nearest(x, size))


# Bytes of float32 attention scores one query chunk may hold (B x heads x chunk x Lk x 4). SD-1.5's 64x64-token
# self-attention at 560x816 (7,140 tokens, 16 rows with CFG, 8 heads) would otherwise materialise 26 GB of
# scores per call through XLA; chunking the queries keeps it to this per chunk, with the same result per row.
ATTENTION_SCORE_BUDGET = 256 * 2**20


def attention(q: jax.Array, k: jax.Array, v: jax.Array, heads: int, upcast: bool = False,
              score_budget: int | None = None) -> jax.Array:
  """Multi-head scaled dot-product attention: cuDNN's fused kernel where the target platform has it, else XLA's
  softmax(QK^T/sqrt(Dh))V over query chunks (`chunked_attention`).

  Args:
    q: (B, Lq, heads*Dh); k, v: (B, Lk, heads*Dh).
    upcast: compute in float32 (diffusers' upcast_attention / upcast_softmax: SD-2.1 overflows
      in fp16 otherwise).
    score_budget: bytes of float32 scores per query chunk on the XLA path; None: ATTENTION_SCORE_BUDGET.
  Returns:
    (B, Lq, heads*Dh) in q's dtype. Scale is Dh^-0.5 as diffusers.
  """
  b, lq, d = q.shape
  dh = d // heads
  out_dtype = q.dtype
  # XLA's CPU backend has no float16 matmul with float32 accumulation (what XLA attention asks for in fp16), so a
  # float16 run on a CPU attends in float32: more precise than the GPU path, never less.
  upcast = upcast or (q.dtype == jnp.float16 and platform.current() == "cpu")
  if upcast:
    q, k, v = (a.astype(jnp.float32) for a in (q, k, v))
  split = lambda a: a.reshape(a.shape[0], a.shape[1], heads, dh)
  q, k, v = split(q), split(k), split(v)
  o = None
  if platform.use_cudnn_attention(q.dtype, dh):
    try:
      o = jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
    except (NotImplementedError, ValueError, RuntimeError):
      o = None  # shape/dtype the fused kernel rejects at trace time: fall back to XLA
  if o is None:
    o = chunked_attention(q, k, v, ATTENTION_SCORE_BUDGET if score_budget is None else score_budget)
  return o.reshape(b, lq, d).astype(out_dtype)


def chunked_attention(q: jax.Array, k: jax.Array, v: jax.Array, score_budget: int) -> jax.Array:
  """XLA's softmax(QK^T/sqrt(Dh))V with the queries split into chunks of at most `score_budget` bytes of scores.

  Each query row's softmax sees every key, so chunking the queries changes no row's arithmetic (unlike the
  online softmax of flash attention); it only bounds the score matrix held at once. The chunk body is under
  `jax.checkpoint`, so a VJP through it keeps the query chunks, not the scores.

  Args:
    q: (B, Lq, N, H); k, v: (B, Lk, N, H) (jax.nn.dot_product_attention's layout).
    score_budget: bytes of float32 scores (B*N*chunk*Lk*4) per chunk.
  Returns:
    (B, Lq, N, H) in q's dtype.
  """
  b, lq, n, _ = q.shape
  row_bytes = b * n * k.shape[1] * 4
  chunks = -(-lq * row_bytes // max(int(score_budget), 1))
  if chunks <= 1:
    return jax.nn.dot_product_attention(q, k, v)
  size = -(-lq // chunks)  # balanced chunks; the last is padded with zero queries, dropped below
  chunks = -(-lq // size)
  pad = chunks * size - lq
  qc = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0))) if pad else q
  qc = jnp.moveaxis(qc.reshape(b, chunks, size, *q.shape[2:]), 1, 0)  # (chunks, B, size, N, H)
  one = jax.checkpoint(lambda qq: jax.nn.dot_product_attention(qq, k, v))
  o = jax.lax.map(one, qc)
  return jnp.moveaxis(o, 0, 1).reshape(b, chunks * size, *q.shape[2:])[:, :lq]


class Attention(nn.Module):
  """diffusers `Attention` with the default / IP-Adapter processors.

  Self-attention when `context` is None. With `with_ip_adapter`, decoupled cross-attention
  (IP-Adapter, Ye et al. 2023): out = attn(q, K_text, V_text) + ip_scale * attn(q, K_ip, V_ip),
  with extra bias-free `to_k_ip`, `to_v_ip` projections, before `to_out.0`.
  `norm_groups` adds a pre-GroupNorm (`group_norm`) and `residual` adds the input back
  (the VAE mid-block attention).
  """
  heads: int
  head_dim: int
  qkv_bias: bool = False
  upcast: bool = False
  with_ip_adapter: bool = False
  norm_groups: Optional[int] = None
  norm_eps: float = 1e-6
  residual: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: Optional[jax.Array] = None,
               ip_tokens: Optional[jax.Array] = None, ip_scale: float | jax.Array = 1.0) -> jax.Array:
    """x: (B, L, C); context: (B, Lc, Dc) or None; ip_tokens: (B, Lip, Dc) or None -> (B, L, C)."""
    query_dim = x.shape[-1]
    inner = self.heads * self.head_dim
    dense = lambda n, bias: nn.Dense(inner, use_bias=bias, dtype=self.dtype, name=n)
    h = x
    if self.norm_groups is not None:
      h = group_norm(self.norm_groups, self.norm_eps, "group_norm", self.dtype)(h)
    ctx = h if context is None else context
    q = dense("to_q", self.qkv_bias)(h)
    out = attention(q, dense("to_k", self.qkv_bias)(ctx), dense("to_v", self.qkv_bias)(ctx),
                    self.heads, self.upcast)
    if self.with_ip_adapter:
      # Params are always created (so a template has them); tokens are optional at call time.
      k_ip_layer, v_ip_layer = dense("to_k_ip", False), dense("to_v_ip", False)
      if ip_tokens is None:
        if self.is_initializing():
          k_ip_layer(ctx), v_ip_layer(ctx)
      else:
        ip = attention(q, k_ip_layer(ip_tokens), v_ip_layer(ip_tokens), self.heads, self.upcast)
        out = out + jnp.asarray(ip_scale, out.dtype) * ip
    out = nn.Dense(query_dim, use_bias=True, dtype=self.dtype, name="to_out_0")(out)
    if self.residual:
      out = out + x
    return out


class GEGLU(nn.Module):
  """proj -> split (hidden, gate) -> hidden * gelu(gate) (exact erf GELU, as torch F.gelu)."""
  inner_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h, gate = jnp.split(nn.Dense(2 * self.inner_dim, dtype=self.dtype, name="proj")(x), 2, axis=-1)
    return h * nn.gelu(gate, approximate=False)


class FeedForward(nn.Module):
  """net.0 = GEGLU(dim, 4*dim), net.1 = dropout (no params), net.2 = Linear(4*dim, dim)."""
  mult: int = 4
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dim = x.shape[-1]
    h = GEGLU(dim * self.mult, dtype=self.dtype, name="net_0")(x)
    return nn.Dense(dim, dtype=self.dtype, name="net_2")(h)


class BasicTransformerBlock(nn.Module):
  """LN -> self-attn -> LN -> cross-attn (text [+ IP tokens]) -> LN -> GEGLU FF, residual each."""
  heads: int
  head_dim: int
  upcast: bool = False
  with_ip_adapter: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context, ip_tokens=None, ip_scale=1.0):
    """x: (B, L, C); context: (B, Lc, Dc); ip_tokens: (B, Lip, Dc) or None -> (B, L, C)."""
    attn = lambda n, ip: Attention(self.heads, self.head_dim, upcast=self.upcast,
                                   with_ip_adapter=ip, dtype=self.dtype, name=n)
    x = attn("attn1", False)(layer_norm(1e-5, "norm1", self.dtype)(x)) + x
    x = attn("attn2", self.with_ip_adapter)(
        layer_norm(1e-5, "norm2", self.dtype)(x), context, ip_tokens, ip_scale) + x
    x = FeedForward(dtype=self.dtype, name="ff")(layer_norm(1e-5, "norm3", self.dtype)(x)) + x
    return x


class Transformer2DModel(nn.Module):
  """diffusers `Transformer2DModel` for continuous (B, H, W, C) input.

  GroupNorm(eps 1e-6) -> proj_in (1x1 conv, or Linear when use_linear_projection, SD-2) ->
  `num_layers` BasicTransformerBlocks -> proj_out -> + input.
  """
  heads: int
  head_dim: int
  num_layers: int = 1
  norm_groups: int = 32
  use_linear_projection: bool = False
  upcast: bool = False
  with_ip_adapter: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context, ip_tokens=None, ip_scale=1.0):
    """x: (B, H, W, C); context: (B, Lc, Dc); ip_tokens: (B, Lip, Dc) or None -> (B, H, W, C)."""
    b, hh, ww, c = x.shape
    inner = self.heads * self.head_dim
    h = group_norm(self.norm_groups, 1e-6, "norm", self.dtype)(x)
    if self.use_linear_projection:
      h = nn.Dense(inner, dtype=self.dtype, name="proj_in")(h.reshape(b, hh * ww, c))
    else:
      h = _conv(inner, 1, "proj_in", self.dtype)(h).reshape(b, hh * ww, inner)
    for i in range(self.num_layers):
      h = BasicTransformerBlock(self.heads, self.head_dim, self.upcast, self.with_ip_adapter,
                                dtype=self.dtype, name=f"transformer_blocks_{i}")(
                                    h, context, ip_tokens, ip_scale)
    if self.use_linear_projection:
      h = nn.Dense(c, dtype=self.dtype, name="proj_out")(h).reshape(b, hh, ww, c)
    else:
      h = _conv(c, 1, "proj_out", self.dtype)(h.reshape(b, hh, ww, inner))
    return h + x
