"""Tiny random CLIP and SigLIP models saved to disk with their processors (no downloads), for tests."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import transformers

TEXT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=16,
)
VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
)
WORDS = ["a", "photo", "of", "cat", "dog", "very", "long", "caption"]


def _clip_tokenizer(folder: Path) -> transformers.CLIPTokenizer:
    """A byte-pair CLIP tokenizer over single letters plus one merge, from files written here."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    vocab["ca"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\nc a\n")
    return transformers.CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16
    )


def _siglip_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A word-level tokenizer (SiglipTokenizer needs sentencepiece, which is not a dependency)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<unk>": 1, "</s>": 2} | {w: i + 3 for i, w in enumerate(WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="</s>", model_max_length=16
    )


def make_clip_dir(root: Path) -> Path:
    """A tiny random CLIP with its processor and a README declaring a licence, saved under `root`."""
    torch.manual_seed(0)
    text = TEXT | dict(vocab_size=64, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    config = transformers.CLIPConfig(text_config=text, vision_config=VISION, projection_dim=24)
    path = root / "tiny-clip"
    transformers.CLIPModel(config).save_pretrained(path)
    image_processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    tokenizer = _clip_tokenizer(root / "clip-tokenizer-files")
    transformers.CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    (path / "README.md").write_text("---\nlicense: mit\ntags: [test]\n---\n# tiny clip\n")
    return path


def make_siglip_dir(root: Path) -> Path:
    """A tiny random SigLIP with an image processor and a tokenizer saved separately, under `root`."""
    torch.manual_seed(1)
    path = root / "tiny-siglip"
    text = TEXT | dict(vocab_size=len(WORDS) + 3, pad_token_id=0, eos_token_id=2)
    config = transformers.SiglipConfig(text_config=text, vision_config=VISION)
    model = transformers.SiglipModel(config)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(10.0))
    model.save_pretrained(path)
    transformers.SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    _siglip_tokenizer().save_pretrained(path)
    return path
