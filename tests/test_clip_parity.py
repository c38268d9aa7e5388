"""Parity of our Flax CLIP (text, vision, preprocessing, tokenizer) against transformers on CPU.

Tiny random models saved in the real on-disk formats, loaded through our loaders, compared on fresh
random inputs (unseeded; the seed is printed in every assertion). fp32 bound: relative error
||ours - ref|| / ||ref|| <= 1e-4 over each whole output; max abs error is reported alongside.
"""

import json
import os
import secrets

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from parity import assert_close  # noqa: E402

# Measured 2026-12-01 (CPU fp32, text and vision towers, all parametrizations): rel L2 1.2e-7-2.1e-7. Bound ~20x.
CLIP_RTOL = 4e-6
from splatshot_jax.diffusion import clip  # noqa: E402
from splatshot_jax.diffusion import tokenizer as tok_lib  # noqa: E402



def _seed():
  return secrets.randbits(31)


def _randomise(module, seed, scale=0.3):
  """Overwrites every parameter (LayerNorm ones/zeros included) so a mis-mapped leaf shows."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.copy_(torch.randn(p.shape, generator=g) * scale)


# ----------------------------------------------------------------------------------------------
# Text encoder

TEXT_CFG = dict(vocab_size=320, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                num_attention_heads=4, max_position_embeddings=77)


@pytest.mark.parametrize("layout,hidden_act,eos", [
    ("v5_safetensors", "quick_gelu", 2),       # transformers 5 save_pretrained, SD-1.5 legacy eos
    ("v4_bin", "gelu", 319),                   # transformers 4 layout (text_model. prefix) as .bin
])
def test_text_encoder_parity(tmp_path, layout, hidden_act, eos):
  seed = _seed()
  torch.manual_seed(seed)
  cfg = transformers.CLIPTextConfig(**TEXT_CFG, hidden_act=hidden_act, eos_token_id=eos,
                                    bos_token_id=318, pad_token_id=eos)
  ref = transformers.CLIPTextModel(cfg).eval()
  _randomise(ref, seed)
  folder = str(tmp_path / "text_encoder")
  if layout == "v5_safetensors":
    ref.save_pretrained(folder)
  else:
    os.makedirs(folder)
    cfg.to_json_file(os.path.join(folder, "config.json"))
    sd = {f"text_model.{k}": v for k, v in ref.state_dict().items()}
    sd["text_model.embeddings.position_ids"] = torch.arange(77)[None]  # old persistent buffer
    torch.save(sd, os.path.join(folder, "pytorch_model.bin"))

  model, params = clip.load_text_encoder(folder)
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, 318, size=(3, 77))
  ids[:, 0] = 318
  for b, n in enumerate(rng.integers(2, 77, size=3)):  # an EOS, then EOS-padding, as SD feeds it
    ids[b, n:] = 319
  with torch.no_grad():
    r = ref(torch.as_tensor(ids), output_hidden_states=True)
  o = model.apply({"params": params}, jnp.asarray(ids, jnp.int32), output_hidden_states=True)
  assert_close(o.last_hidden_state, r.last_hidden_state, "last_hidden_state", seed, rtol=CLIP_RTOL)
  assert_close(o.pooler_output, r.pooler_output, "pooler_output", seed, rtol=CLIP_RTOL)
  assert len(o.hidden_states) == len(r.hidden_states)
  for i, (a, b) in enumerate(zip(o.hidden_states, r.hidden_states)):
    assert_close(a, b, f"hidden_states[{i}]", seed, rtol=CLIP_RTOL)


def test_text_encoder_padding_mask(tmp_path):
  seed = _seed()
  torch.manual_seed(seed)
  cfg = transformers.CLIPTextConfig(**TEXT_CFG, eos_token_id=319, bos_token_id=318, pad_token_id=0)
  ref = transformers.CLIPTextModel(cfg).eval()
  _randomise(ref, seed)
  ref.save_pretrained(str(tmp_path))
  model, params = clip.load_text_encoder(str(tmp_path))
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, 318, size=(2, 20))
  ids[:, -1] = 319
  mask = np.ones_like(ids)
  mask[1, 12:] = 0
  with torch.no_grad():
    r = ref(torch.as_tensor(ids), attention_mask=torch.as_tensor(mask))
  o = model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask))
  assert_close(o.last_hidden_state, r.last_hidden_state, "masked last_hidden_state", seed, rtol=CLIP_RTOL)


# ----------------------------------------------------------------------------------------------
# Vision encoder

VISION_CFG = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                  image_size=32, patch_size=8, projection_dim=24)


@pytest.mark.parametrize("hidden_act", ["gelu", "quick_gelu"])
def test_vision_encoder_parity(tmp_path, hidden_act):
  seed = _seed()
  torch.manual_seed(seed)
  ref = transformers.CLIPVisionModelWithProjection(
      transformers.CLIPVisionConfig(**VISION_CFG, hidden_act=hidden_act)).eval()
  _randomise(ref, seed)
  ref.save_pretrained(str(tmp_path))
  model, params = clip.load_vision_encoder(str(tmp_path))
  x = np.random.default_rng(seed).standard_normal((2, 3, 32, 32)).astype(np.float32)
  with torch.no_grad():
    r = ref(torch.as_tensor(x), output_hidden_states=True)
  o = model.apply({"params": params}, jnp.asarray(x.transpose(0, 2, 3, 1)), output_hidden_states=True)
  assert_close(o.image_embeds, r.image_embeds, "image_embeds", seed, rtol=CLIP_RTOL)
  assert_close(o.last_hidden_state, r.last_hidden_state, "last_hidden_state", seed, rtol=CLIP_RTOL)
  assert len(o.hidden_states) == len(r.hidden_states) == VISION_CFG["num_hidden_layers"] + 1
  for i, (a, b) in enumerate(zip(o.hidden_states, r.hidden_states)):
    assert_close(a, b, f"hidden_states[{i}]", seed, rtol=CLIP_RTOL)


def test_vision_config_from_full_clip_config():
  d = {"projection_dim": 16, "vision_config": dict(VISION_CFG, projection_dim=None, hidden_act="gelu"),
       "text_config": {"hidden_size": 8}}
  c = clip.CLIPVisionConfig.from_json_dict(d)
  assert c.projection_dim == 16 and c.hidden_size == 32 and c.patch_size == 8


def test_config_defaults_match_transformers():
  """A config.json may omit fields equal to transformers' defaults; ours must fill the same values."""
  for ours, theirs in [(clip.CLIPTextConfig(), transformers.CLIPTextConfig()),
                       (clip.CLIPVisionConfig(), transformers.CLIPVisionConfig())]:
    for k, v in vars(ours).items():
      assert getattr(theirs, k) == v, f"{type(ours).__name__}.{k}: ours {v}, transformers {getattr(theirs, k)}"


# ----------------------------------------------------------------------------------------------
# Image preprocessing


def _reference_processor():
  try:
    from transformers import CLIPImageProcessorPil as P  # what the official (PIL) pipeline used
  except ImportError:
    from transformers import CLIPImageProcessor as P
  return P()


@pytest.mark.parametrize("hw", [(300, 420), (512, 256), (224, 224), (100, 150), (225, 1000)])
def test_preprocess_matches_clip_image_processor(hw):
  """Same PIL bicubic resize + crop + normalise: agreement to float32 rounding (1e-5 abs).

  The only floating-point step after the (shared, 8-bit) PIL resize is (x/255 - mean)/std in float32,
  identical operation order, so any difference above 1e-5 would mean a different resize or crop.
  """
  from PIL import Image
  seed = _seed()
  img = np.random.default_rng(seed).integers(0, 256, size=hw + (3,), dtype=np.uint8)
  ref = _reference_processor()(images=Image.fromarray(img), return_tensors="np")["pixel_values"][0]
  ours = clip.preprocess_image(Image.fromarray(img))
  assert ours.shape == (224, 224, 3)
  np.testing.assert_allclose(ours, ref.transpose(1, 2, 0), atol=1e-5, err_msg=f"seed {seed}")
  np.testing.assert_allclose(clip.preprocess_image(img), ours, atol=0, err_msg=f"seed {seed}")
  np.testing.assert_allclose(clip.preprocess_image(img / 255.0), ours, atol=0, err_msg=f"seed {seed}")


# ----------------------------------------------------------------------------------------------
# Tokenizer

PROMPT = "high quality portrait, detailed face, photorealistic"
NEGATIVE = "blurry, low quality, distorted, deformed"
CORPUS = (PROMPT + " " + NEGATIVE + " a photo of a person with short hair and a smiling face, studio "
          "lighting, sharp focus, realistic skin texture, ugly, bad anatomy, cartoon, painting, "
          "it's the person's portrait; they're happy. 3d render 8k uhd, masterpiece best quality ") * 3


def _learn_bpe(corpus, n_merges=200):
  """A tiny CLIP-format BPE (bytes, bytes+</w>, learned merges, specials last), learned greedily."""
  from tokenizers import Regex, normalizers, pre_tokenizers
  norm = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                               normalizers.Lowercase()])
  pre = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(tok_lib._CLIP_SPLIT), behavior="removed", invert=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False)])
  counts = {}
  for w, _ in pre.pre_tokenize_str(norm.normalize_str(corpus)):
    sym = tuple(w[:-1]) + (w[-1] + "</w>",)
    counts[sym] = counts.get(sym, 0) + 1
  alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
  vocab = alphabet + [c + "</w>" for c in alphabet]
  merges = []
  for _ in range(n_merges):
    pairs = {}
    for sym, c in counts.items():
      for p in zip(sym[:-1], sym[1:]):
        pairs[p] = pairs.get(p, 0) + c
    if not pairs:
      break
    best = max(pairs, key=lambda p: (pairs[p], p))
    merges.append(best)
    vocab.append(best[0] + best[1])
    new = {}
    for sym, c in counts.items():
      out, i = [], 0
      while i < len(sym):
        if i + 1 < len(sym) and (sym[i], sym[i + 1]) == best:
          out.append(sym[i] + sym[i + 1])
          i += 2
        else:
          out.append(sym[i])
          i += 1
      new[tuple(out)] = new.get(tuple(out), 0) + c
    counts = new
  vocab += ["<|startoftext|>", "<|endoftext|>"]
  return {t: i for i, t in enumerate(dict.fromkeys(vocab))}, merges


def _write_tokenizer_folder(folder, pad_token="<|endoftext|>"):
  vocab, merges = _learn_bpe(CORPUS)
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
    json.dump(vocab, f, ensure_ascii=False)
  with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
    f.write("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
  specials = {"bos_token": {"content": "<|startoftext|>", "lstrip": False, "normalized": True,
                            "rstrip": False, "single_word": False},
              "eos_token": "<|endoftext|>", "pad_token": pad_token, "unk_token": "<|endoftext|>"}
  with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
    json.dump(specials, f)
  with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:  # as SD-1.5's file
    json.dump(dict(specials, model_max_length=77, tokenizer_class="CLIPTokenizer",
                   do_lower_case=True, errors="replace", add_prefix_space=False), f)
  return vocab


PROMPTS = [
    PROMPT, NEGATIVE, "", "A Photo of a PERSON", "  studio\tlighting \n\n sharp   focus ",
    "it's the person's portrait; they're happy!!! 3d 8k 1234 uhd",
    "café naïve résumé 日本語 😀 — “quoted” ½", "x <|endoftext|> y", "face" + ",face" * 60,
]


@pytest.mark.parametrize("pad_token", ["<|endoftext|>", "!"])  # SD-1.5 pads with EOS, SD-2 with "!"
def test_tokenizer_matches_transformers(tmp_path, pad_token):
  folder = str(tmp_path / "tokenizer")
  _write_tokenizer_folder(folder, pad_token)
  ref = transformers.CLIPTokenizer.from_pretrained(folder)
  ours = tok_lib.CLIPTokenizer.from_pretrained(folder)
  expected = ref(PROMPTS, padding="max_length", max_length=ref.model_max_length, truncation=True,
                 return_tensors="np")["input_ids"]
  got = ours(PROMPTS)
  assert got.shape == (len(PROMPTS), 77) and got.dtype == np.int32
  for p, g, e in zip(PROMPTS, got, expected):
    assert g.tolist() == e.tolist(), f"prompt {p!r}:\nours {g.tolist()}\nref  {e.tolist()}"
  assert ours.pad_token_id == ref.pad_token_id
  # The paper prompt is learned into few pieces; the long one is truncated to BOS + 75 + EOS.
  assert len(ours.tokenize(PROMPT)) < len(PROMPT) // 2
  assert got[-1, -1] == ours.eos_token_id
  assert ours.decode(got[0]) == ref.decode(expected[0], skip_special_tokens=True)


def test_tokenizer_from_tokenizer_json(tmp_path):
  """A folder written by transformers 5 (tokenizer.json) gives the same ids as vocab + merges."""
  src = str(tmp_path / "src")
  _write_tokenizer_folder(src)
  dst = str(tmp_path / "saved")
  transformers.CLIPTokenizer.from_pretrained(src).save_pretrained(dst)
  for f in ("vocab.json", "merges.txt"):
    if os.path.exists(os.path.join(dst, f)):
      os.remove(os.path.join(dst, f))
  assert os.path.exists(os.path.join(dst, "tokenizer.json"))
  np.testing.assert_array_equal(tok_lib.CLIPTokenizer.from_pretrained(dst)(PROMPTS),
                                tok_lib.CLIPTokenizer.from_pretrained(src)(PROMPTS))


@pytest.mark.parametrize("hw", [(300, 420), (816, 560), (150, 100)])
def test_preprocess_jax_close_to_clip_image_processor(hw):
  """The JAX path emulates PIL's two 8-bit bicubic passes; PIL's fixed-point weights still move a few
  pixels by one 8-bit level, i.e. <= 1/255/min(std) ~= 0.0146 after normalisation, on < 1% of values."""
  from PIL import Image
  seed = _seed()
  rng = np.random.default_rng(seed)
  img = rng.integers(0, 256, size=hw + (3,), dtype=np.uint8)
  ref = _reference_processor()(images=Image.fromarray(img), return_tensors="np")["pixel_values"]
  ref = ref.transpose(0, 2, 3, 1)
  ours = np.asarray(clip.preprocess_image_jax(jnp.asarray(img)[None]))
  d = np.abs(ours - ref)
  bound = 1 / 255 / min(clip.CLIP_STD) + 1e-5
  assert d.max() <= bound, f"max abs {d.max():.4f} > {bound:.4f} (seed {seed})"
  assert (d > 1e-5).mean() < 0.01, f"{(d > 1e-5).mean():.2%} values off by a level (seed {seed})"
  # Float input in [0, 1] (e.g. a render) is rounded to 8 bits first, as preprocess_image does.
  f = np.asarray(clip.preprocess_image_jax(jnp.asarray(img / 255.0, jnp.float32)[None]))
  np.testing.assert_allclose(f, ours, atol=1e-5, err_msg=f"seed {seed}")
