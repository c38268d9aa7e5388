"""CLIP BPE tokenizer from a checkpoint's `tokenizer/` folder, giving transformers' ids exactly.

Builds the same `tokenizers` pipeline as transformers 5's CLIPTokenizer: NFC + whitespace collapse +
lowercase, CLIP's split regex, byte-level BPE with the `</w>` end-of-word suffix, then
`<|startoftext|> ... <|endoftext|>`, truncated and padded to `model_max_length` (77) with the
folder's pad token -- as SD pipelines call it (`padding="max_length", truncation=True`).

Usage:

  from splatshot_jax.diffusion.tokenizer import CLIPTokenizer

  tok = CLIPTokenizer.from_pretrained("sd15/tokenizer")
  ids = tok(["high quality portrait, detailed face, photorealistic",
             "blurry, low quality, distorted, deformed"])  # (2, 77) int32 numpy
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from splatshot_jax.diffusion.convert import CheckpointError

# CLIP's pre-tokenisation regex (transformers 5 tokenization_clip.py).
_CLIP_SPLIT = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
               r"""[^\s\p{L}\p{N}]+""")


def _token_str(t: Any) -> str | None:
  """tokenizer_config.json stores special tokens as a string or an AddedToken dict."""
  if isinstance(t, Mapping):
    return t.get("content")
  return t


def _read_json(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _read_merges(path: str) -> list[tuple[str, str]]:
  with open(path, encoding="utf-8") as f:
    lines = f.read().split("\n")
  merges = []
  for i, line in enumerate(lines):
    if (i == 0 and line.startswith("#version")) or not line.strip():
      continue
    parts = line.split()
    if len(parts) != 2:
      raise CheckpointError(f"{path}: line {i + 1} is not a merge pair: {line!r}")
    merges.append((parts[0], parts[1]))
  return merges


class CLIPTokenizer:
  """Text -> (B, max_length) int32 ids, identical to transformers' CLIPTokenizer.

  Attributes:
    model_max_length: padded length (77 for SD).
    bos_token_id, eos_token_id, pad_token_id: the special ids (SD-1.5: 49406, 49407, 49407).
  """

  def __init__(self, vocab: Mapping[str, int], merges: Sequence[tuple[str, str]], *,
               bos_token: str = "<|startoftext|>", eos_token: str = "<|endoftext|>",
               pad_token: str = "<|endoftext|>", unk_token: str = "<|endoftext|>",
               model_max_length: int = 77, name: str = "tokenizer"):
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    for t in (bos_token, eos_token, pad_token, unk_token):
      if t not in vocab:
        raise CheckpointError(f"{name}: special token {t!r} is not in vocab.json.")
    tk = Tokenizer(BPE(vocab=dict(vocab), merges=list(merges), dropout=None, continuing_subword_prefix="",
                       end_of_word_suffix="</w>", fuse_unk=False, unk_token=unk_token))
    tk.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tk.decoder = decoders.ByteLevel()
    # Special tokens are matched verbatim before normalisation, as transformers registers them.
    tk.add_special_tokens(list(dict.fromkeys([bos_token, eos_token, unk_token, pad_token])))
    self.bos_token_id, self.eos_token_id = vocab[bos_token], vocab[eos_token]
    self.pad_token_id = vocab[pad_token]
    self.model_max_length = model_max_length
    self._tk = tk

  @classmethod
  def from_pretrained(cls, folder: str) -> "CLIPTokenizer":
    """Reads `vocab.json`, `merges.txt`, and special tokens / max length from `tokenizer_config.json`
    and `special_tokens_map.json` (or, lacking vocab/merges, the BPE model in `tokenizer.json`)."""
    cfg = _read_json(os.path.join(folder, "tokenizer_config.json"))
    cfg.update({k: v for k, v in _read_json(os.path.join(folder, "special_tokens_map.json")).items()
                if k not in cfg})
    vocab_path, merges_path = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
    if os.path.exists(vocab_path) and os.path.exists(merges_path):
      vocab, merges = _read_json(vocab_path), _read_merges(merges_path)
    elif os.path.exists(os.path.join(folder, "tokenizer.json")):
      model = _read_json(os.path.join(folder, "tokenizer.json"))["model"]
      vocab = model["vocab"]
      merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    else:
      raise CheckpointError(f"{folder}: no vocab.json + merges.txt (or tokenizer.json) in this folder.")
    kw = {}
    for k in ("bos_token", "eos_token", "pad_token", "unk_token"):
      if _token_str(cfg.get(k)) is not None:
        kw[k] = _token_str(cfg[k])
    max_len = cfg.get("model_max_length", 77)
    # transformers writes a huge sentinel when unset; CLIP's context is 77 tokens.
    kw["model_max_length"] = int(max_len) if max_len and max_len < 10**6 else 77
    return cls(vocab, merges, name=folder, **kw)

  def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
    """texts: a prompt or a list of B prompts. Returns (B, model_max_length) int32 ids."""
    if isinstance(texts, str):
      texts = [texts]
    n = self.model_max_length
    out = np.full((len(texts), n), self.pad_token_id, np.int32)
    for b, enc in enumerate(self._tk.encode_batch(list(texts), add_special_tokens=False)):
      # BOS + at most n-2 pieces + EOS, then pad: transformers' truncation keeps room for specials.
      ids = [self.bos_token_id] + enc.ids[:n - 2] + [self.eos_token_id]
      out[b, :len(ids)] = ids
    return out

  def tokenize(self, text: str) -> list[str]:
    """The BPE pieces of `text` without specials or padding (for inspection)."""
    return self._tk.encode(text, add_special_tokens=False).tokens

  def decode(self, ids: Sequence[int]) -> str:
    """Ids back to text, specials dropped, `</w>` turned into spaces."""
    return self._tk.decode(list(ids), skip_special_tokens=True).replace("</w>", " ").strip()
