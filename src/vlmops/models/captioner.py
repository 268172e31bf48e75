"""builtin:emoji-captioner, a small generative VLM that works offline: emoji-lit's image tower, frozen,
feeding prefix tokens to a small transformer decoder over a WordPiece vocabulary.

The image becomes ten prefix tokens: the tower's 3x3 grid of final feature maps and its pooled
embedding, each projected to the decoder's width. After them come the prompt's tokens, ``[BOS]`` and
the answer. The decoder is causal everywhere (GPT-style) and predicts the answer and ``[EOS]``.
Prompts are left-padded in a batch and positions count real tokens only, so an answer does not
depend on what else is in the batch. Generation keeps each layer's keys and values (`start`, then
one `step` per token), so a token costs one position, not the whole sequence again; a test checks it
against recomputing everything. Decoding is greedy at temperature 0; above it, sampling uses a
`torch.Generator` seeded per request. Log-probabilities of the chosen tokens come with every answer.

The weights file holds the decoder only; the tower is read from emoji-lit's shipped weights (the
card records their sha256, and loading refuses a different tower). Training lives in
`caption_training.py`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from vlmops.errors import ModelLoadError
from vlmops.models.base import Generation, ModelInfo, Usage, check_generation_inputs
from vlmops.models.towers import ImageTower, pixels_from_images

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)
PREFIX_TOKENS = 10  # 3x3 grid + pooled embedding


@dataclass(frozen=True)
class CaptionerConfig:
    """Shape of the decoder; saved in the card."""

    vocab_size: int
    d_model: int = 192
    layers: int = 4
    heads: int = 4
    ff: int = 640
    max_text: int = 56  # prompt + [BOS] + answer + [EOS]
    grid_channels: int = 256
    global_dim: int = 384
    dropout: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)


class CaptionDecoder(nn.Module):
    """Image prefix + text -> next-token logits at every text position."""

    def __init__(self, config: CaptionerConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        self.grid = nn.Linear(config.grid_channels, d)
        self.pooled = nn.Linear(config.global_dim, d)
        self.tokens = nn.Embedding(config.vocab_size, d)
        self.positions = nn.Embedding(PREFIX_TOKENS + config.max_text, d)
        layer = nn.TransformerEncoderLayer(
            d, config.heads, config.ff, config.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, config.vocab_size, bias=False)
        self.out.weight = self.tokens.weight  # tied input and output embeddings
        nn.init.normal_(self.tokens.weight, std=0.02)
        nn.init.normal_(self.positions.weight, std=0.02)

    def forward(self, grid: torch.Tensor, pooled: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor):
        """grid (n, C, 3, 3), pooled (n, 384), ids/mask (n, T) -> logits (n, T, vocab)."""
        n, length = ids.shape
        prefix = torch.cat([self.pooled(pooled)[:, None], self.grid(grid.flatten(2).transpose(1, 2))], 1)
        text_positions = PREFIX_TOKENS + (mask.long().cumsum(1) - 1).clamp(min=0)
        prefix_positions = torch.arange(PREFIX_TOKENS).expand(n, -1)
        x = torch.cat([prefix, self.tokens(ids)], 1)
        x = x + self.positions(torch.cat([prefix_positions, text_positions], 1))
        size = PREFIX_TOKENS + length
        causal = torch.triu(torch.ones(size, size, dtype=torch.bool), diagonal=1)
        padding = torch.cat([torch.zeros(n, PREFIX_TOKENS, dtype=torch.bool), ~mask.bool()], 1)
        hidden = self.blocks(x, mask=causal, src_key_padding_mask=padding)
        return self.out(self.norm(hidden[:, PREFIX_TOKENS:]))

    def start(self, grid: torch.Tensor, pooled: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor):
        """Decoding with a key/value cache, step 1: run prefix and prompt once; returns the next-token
        logits (n, vocab) and the cache. Same arithmetic as `forward`, one position at a time after."""
        n, _ = ids.shape
        prefix = torch.cat([self.pooled(pooled)[:, None], self.grid(grid.flatten(2).transpose(1, 2))], 1)
        keep = torch.cat([torch.ones(n, PREFIX_TOKENS, dtype=torch.bool), mask.bool()], 1)
        text_positions = PREFIX_TOKENS + (mask.long().cumsum(1) - 1).clamp(min=0)
        positions = torch.cat([torch.arange(PREFIX_TOKENS).expand(n, -1), text_positions], 1)
        x = torch.cat([prefix, self.tokens(ids)], 1) + self.positions(positions)
        cache = {"keep": keep, "next_position": text_positions[:, -1] + 1, "layers": []}
        return self._through_layers(x, cache), cache

    def step(self, token: torch.Tensor, real: torch.Tensor, cache: dict):
        """Decoding with a key/value cache, each later step: feed one token per row (`real` False for
        rows that have finished, whose token is ignored); returns the next-token logits (n, vocab)."""
        cache["keep"] = torch.cat([cache["keep"], real[:, None]], 1)
        x = self.tokens(token[:, None]) + self.positions(cache["next_position"][:, None])
        cache["next_position"] = cache["next_position"] + real.long()
        return self._through_layers(x, cache)

    def _through_layers(self, x: torch.Tensor, cache: dict) -> torch.Tensor:
        first = not cache["layers"]
        for i, layer in enumerate(self.blocks.layers):
            past = None if first else cache["layers"][i]
            x, keys, values = _attend_and_feed(layer, x, past, cache["keep"])
            if first:
                cache["layers"].append((keys, values))
            else:
                cache["layers"][i] = (keys, values)
        return self.out(self.norm(x[:, -1]))


def _attend_and_feed(layer: nn.TransformerEncoderLayer, x: torch.Tensor, past, keep: torch.Tensor):
    """One pre-norm encoder layer on the new positions `x`, attending to the cached keys and values
    too (causal within `x`, padding from `keep`); returns its output and the extended keys, values."""
    attention = layer.self_attn
    n, new, d = x.shape
    heads = attention.num_heads
    q, k, v = nn.functional.linear(layer.norm1(x), attention.in_proj_weight, attention.in_proj_bias).chunk(
        3, -1
    )
    q, k, v = (t.view(n, new, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    if past is not None:
        k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
    total = k.shape[2]
    allowed = keep[:, None, None, :] & torch.ones(new, total, dtype=torch.bool).tril(total - new)
    mixed = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    x = x + attention.out_proj(mixed.transpose(1, 2).reshape(n, new, d))
    x = x + layer.linear2(layer.activation(layer.linear1(layer.norm2(x))))
    return x, k, v


def image_features(tower: ImageTower, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The tower's final 3x3 feature grid (before pooling) and its unit embedding, for [-1, 1] pixels."""
    grid = tower.features[:-2](pixels)  # drop AdaptiveAvgPool + Flatten
    pooled = tower.head(tower.features[-2:](grid))
    return grid, nn.functional.normalize(pooled, dim=-1)


class EmojiCaptioner:
    """Answers prompts about emoji images: names, keywords, category, skin tone, gender, people."""

    exposes_logprobs = True

    def __init__(self, tower: ImageTower, decoder: CaptionDecoder, tokenizer, info: ModelInfo, card: dict):
        self.tower = tower.eval()
        self.decoder = decoder.eval()
        self.tokenizer = tokenizer
        self.info = info
        self.card = card
        self.batch_size = 32
        self._special = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}

    def generate(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        *,
        max_tokens: int = 32,
        temperature: float = 0.0,
        seed: int | None = None,
        logprobs: bool = False,
        top_p: float = 1.0,
        should_stop: Callable[[int], bool] | None = None,
        on_text: Mapping[int, Callable[[str], None]] | None = None,
    ) -> list[Generation]:
        """One answer per (image, prompt) pair; `logprobs` is accepted for the protocol (always returned).

        `top_p` < 1 samples from the smallest set of tokens whose probability reaches it (nucleus).
        `should_stop(i)` is asked before every token: True ends answer `i` there (its caller went away;
        a batch whose answers have all stopped ends at once). `on_text[i]` is called with answer `i`'s
        text so far after each of its tokens (streaming); the last call may precede the final text.
        """
        check_generation_inputs(images, prompts, max_tokens)
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        decoding = _Decoding(max_tokens, temperature, seed, top_p, should_stop, on_text or {})
        answers: list[Generation] = []
        for start in range(0, len(images), self.batch_size):
            stop = start + self.batch_size
            answers += self._generate_batch(images[start:stop], prompts[start:stop], start, decoding)
        return answers

    @torch.inference_mode()
    def _generate_batch(self, images, prompts, offset: int, decoding: _Decoding) -> list[Generation]:
        max_tokens, temperature, seed = decoding.max_tokens, decoding.temperature, decoding.seed
        should_stop = decoding.should_stop
        began = time.perf_counter()
        size = self.tower.config.image_size
        grid, pooled = image_features(self.tower, pixels_from_images(images, size))
        prompt_ids = [self._prompt_ids(p) for p in prompts]
        room = torch.tensor([self.decoder.config.max_text - len(p) for p in prompt_ids])  # per answer
        ids, mask = _left_pad(prompt_ids, self._special[PAD])
        n = len(prompt_ids)
        new_ids = torch.zeros(n, 0, dtype=torch.long)
        chosen_logprobs = torch.zeros(n, 0)
        finished = room <= 0
        generators = [_generator(seed, offset + i) for i in range(n)] if temperature > 0 else None
        first_token = None
        logits, cache = self.decoder.start(grid, pooled, ids, mask)
        for step in range(max_tokens):
            if should_stop is not None:
                finished = finished | torch.tensor([should_stop(offset + i) for i in range(n)])
            if finished.all():
                break
            logp = torch.log_softmax(logits.float(), dim=-1)
            if generators is None:
                token = logp.argmax(-1)
            else:
                probs = _nucleus(torch.softmax(logits.float() / temperature, dim=-1), decoding.top_p)
                token = torch.stack(
                    [torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(generators)]
                )
            token = token.masked_fill(finished, self._special[PAD])
            chosen = logp.gather(1, token[:, None])[:, 0].masked_fill(finished, 0.0)
            new_ids = torch.cat([new_ids, token[:, None]], 1)
            chosen_logprobs = torch.cat([chosen_logprobs, chosen[:, None]], 1)
            first_token = first_token if first_token is not None else time.perf_counter() - began
            real = ~finished  # rows whose token this step is an answer token (an [EOS] included)
            finished = finished | (token == self._special[EOS]) | (room <= step + 1)
            self._report(decoding.on_text, offset, new_ids, real & (token != self._special[EOS]))
            if step + 1 < max_tokens and not finished.all():
                logits = self.decoder.step(token, real, cache)
        seconds = time.perf_counter() - began
        return [
            self._answer(new_ids[i], chosen_logprobs[i], len(prompt_ids[i]), seconds, first_token)
            for i in range(n)
        ]

    def _report(self, on_text: Mapping, offset: int, new_ids: torch.Tensor, grew: torch.Tensor) -> None:
        """Tell each streamed answer that got a token this step its text so far."""
        for i in grew.nonzero()[:, 0].tolist() if on_text else ():
            callback = on_text.get(offset + i)
            if callback is not None:
                real = [t for t in new_ids[i].tolist() if t != self._special[PAD]]
                callback(detokenise(self.tokenizer.decode(real)))

    def _prompt_ids(self, prompt: str) -> list[int]:
        ids = self.tokenizer.encode(prompt).ids
        limit = self.decoder.config.max_text // 2
        return [*ids[-limit:], self._special[BOS]]  # a long prompt keeps its end (the question)

    def _answer(
        self, ids: torch.Tensor, logprobs: torch.Tensor, prompt_len: int, seconds: float, first
    ) -> Generation:
        tokens, values, finish = [], [], "length"
        for token, value in zip(ids.tolist(), logprobs.tolist(), strict=True):
            if token == self._special[EOS]:
                finish = "stop"
                break
            if token == self._special[PAD]:
                break
            tokens.append(token)
            values.append(value)
        return Generation(
            text=detokenise(self.tokenizer.decode(tokens)),
            finish_reason=finish,
            usage=Usage(PREFIX_TOKENS + prompt_len, len(tokens) + (finish == "stop")),
            seconds=seconds,
            token_ids=tuple(tokens),
            tokens=tuple(self.tokenizer.id_to_token(t) for t in tokens),
            token_logprobs=tuple(values),
            first_token_seconds=first,
        )


_SPACE_BEFORE = re.compile(r" ([:,.;!?)’])")
_SPACE_AROUND = re.compile(r" ?([-'’]) ?")
_SPACE_AFTER = re.compile(r"([(]) ")


def detokenise(text: str) -> str:
    """WordPiece output with the spaces the pre-tokenizer put around punctuation taken out again:
    "keycap : #" -> "keycap: #", "t - rex" -> "t-rex", "man ' s" -> "man's"."""
    for pattern in (_SPACE_BEFORE, _SPACE_AROUND, _SPACE_AFTER):
        text = pattern.sub(r"\1", text)
    return text


@dataclass(frozen=True)
class _Decoding:
    """How one `generate` call decodes."""

    max_tokens: int
    temperature: float
    seed: int | None
    top_p: float
    should_stop: Callable[[int], bool] | None
    on_text: Mapping[int, Callable[[str], None]]


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Rows of `probs` restricted to their smallest top set reaching `top_p`, renormalised."""
    if top_p >= 1.0:
        return probs
    ordered, order = probs.sort(dim=-1, descending=True)
    outside = ordered.cumsum(-1) - ordered >= top_p  # the first token is always kept
    ordered = ordered.masked_fill(outside, 0.0)
    kept = torch.zeros_like(probs).scatter(-1, order, ordered)
    return kept / kept.sum(-1, keepdim=True)


def _left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return ids, mask


def _generator(seed: int | None, index: int) -> torch.Generator:
    """A generator per answer, so a sampled answer does not depend on its batch-mates."""
    generator = torch.Generator()
    generator.manual_seed((0 if seed is None else seed) * 1_000_003 + index)
    return generator


CARD_FILE, WEIGHTS_FILE, TOKENIZER_FILE = (
    "emoji-captioner.json",
    "emoji-captioner.safetensors",
    "emoji-captioner-tokenizer.json",
)


def load_captioner(
    folder: Path, tower: ImageTower, tower_sha256: str, uri: str, licence: str
) -> EmojiCaptioner:
    """Load the decoder, tokenizer and card from `folder` on top of `tower` (emoji-lit's)."""
    from safetensors.torch import load_model
    from tokenizers import Tokenizer

    from vlmops.hashing import sha256_file

    paths = [folder / CARD_FILE, folder / WEIGHTS_FILE, folder / TOKENIZER_FILE]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise ModelLoadError(
            f"emoji-captioner files {missing} are missing from {folder}; reinstall vlmops or run "
            "`vlmops train --task caption`"
        )
    card = json.loads(paths[0].read_text())
    if card.get("tower_sha256") != tower_sha256:
        raise ModelLoadError(
            f"the captioner in {folder} was trained on another emoji-lit tower "
            f"({str(card.get('tower_sha256'))[:12]}, loaded {tower_sha256[:12]}); "
            "retrain it with `vlmops train --task caption`"
        )
    decoder = CaptionDecoder(CaptionerConfig(**card["decoder"]))
    load_model(decoder, str(paths[1]))  # safetensors' helper restores the tied embedding
    digest = sha256_file(paths[1])
    info = ModelInfo(
        name="emoji-captioner",
        version=f"emoji-captioner-{digest[:12]}",
        dim=0,
        uri=uri,
        weights_sha256=digest,
        licence=licence,
        image_size=tower.config.image_size,
    )
    return EmojiCaptioner(tower, decoder, Tokenizer.from_file(str(paths[2])), info, card)


def save_captioner(decoder: CaptionDecoder, tokenizer, card: dict, out: Path) -> dict:
    """Write the decoder (safetensors), its tokenizer and `card` (with the weights' sha256) to `out`."""
    from safetensors.torch import save_model

    from vlmops.hashing import sha256_file

    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS_FILE
    tmp = weights.with_suffix(".tmp")
    save_model(decoder, str(tmp))
    tmp.replace(weights)
    tokenizer.save(str(out / TOKENIZER_FILE))
    card = {**card, "decoder": decoder.config.to_dict(), "weights_sha256": sha256_file(weights)}
    (out / CARD_FILE).write_text(json.dumps(card, indent=2, default=str) + "\n")
    return card
