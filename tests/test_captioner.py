"""builtin:emoji-captioner: a tiny one trained here on a few emoji meets the generative contract,
learns what it is taught, and is bound to the tower it was trained on."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from generative_contract import check_generative
from vlmops.data.emoji import load_emoji_manifest, manifest_path
from vlmops.data.questions import QUESTIONS, question_rows
from vlmops.errors import ModelLoadError
from vlmops.evaluate.text_metrics import exact_match
from vlmops.models import capabilities, load_model
from vlmops.models.caption_training import CaptionTrainConfig, train_captioner
from vlmops.models.captioner import CARD_FILE, detokenise, save_captioner

pytestmark = pytest.mark.skipif(not manifest_path().exists(), reason="run `vlmops data fetch emoji` first")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A captioner over-fitted on 16 google train emoji (and 16 val ones for the val loss)."""
    torch.set_num_threads(1)
    manifest = load_emoji_manifest()
    subset = manifest[manifest["vendor"] == "google"].groupby("split").head(16)
    config = CaptionTrainConfig(
        epochs=60, d_model=64, layers=2, heads=2, ff=128, vocab_size=400, lr=3e-3, dropout=0.0
    )
    result, tower_sha256 = train_captioner(subset, config)
    out = tmp_path_factory.mktemp("captioner")
    save_captioner(result.decoder, result.tokenizer, {"tower_sha256": tower_sha256}, out)
    return out, subset[subset["split"] == "train"], result


def test_questions_come_from_the_metadata():
    manifest = load_emoji_manifest()
    row = manifest[manifest["name"] == "woman astronaut: dark skin tone"].iloc[0]
    answers = dict(zip(*question_rows(row.to_frame().T)[["kind", "answer"]].values.T, strict=True))
    assert answers["name"] == "woman astronaut: dark skin tone"
    assert (answers["skin_tone"], answers["gender"], answers["person"]) == ("dark", "woman", "yes")
    assert answers["category"] == "people body" and answers["keywords"].startswith("woman astronaut: dark")
    assert set(answers) == set(QUESTIONS)


def test_contract_learning_and_loading(tiny):
    folder, train, result = tiny
    model = load_model(f"builtin:emoji-captioner@{folder}")
    assert capabilities(model) == {"embed": False, "generate": True, "logprobs": True, "gradients": False}
    check_generative(model)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.5 * losses[0], losses
    images = [Image.open(path) for path in train["image"]]  # raw PNGs from disk
    named = model.generate(images, ["Describe this emoji."] * len(images), max_tokens=12)
    assert exact_match([g.text for g in named], [[n] for n in train["name"]]).mean() >= 0.4
    people = model.generate(images, ["Is there a person?"] * len(images), max_tokens=2)
    assert {g.text for g in people} <= {"yes", "no"}
    for answer in named:
        assert answer.token_logprobs is not None and len(answer.token_logprobs) == len(answer.token_ids)
        assert answer.usage.completion_tokens == len(answer.token_ids) + (answer.finish_reason == "stop")


def test_sampling_is_seeded_and_batch_independent(tiny):
    folder, train, _ = tiny
    model = load_model(f"builtin:emoji-captioner@{folder}")
    images = [Image.open(path) for path in train["image"][:6]]
    prompts = ["Describe this emoji with keywords."] * 6
    first = [g.text for g in model.generate(images, prompts, temperature=1.5, seed=3)]
    again = [g.text for g in model.generate(images, prompts, temperature=1.5, seed=3)]
    assert first == again
    model.batch_size = 4
    assert [g.text for g in model.generate(images, prompts, temperature=1.5, seed=3)] == first
    other = [g.text for g in model.generate(images, prompts, temperature=1.5, seed=4)]
    assert other != first


def test_a_captioner_refuses_another_tower(tiny, tmp_path):
    folder, _, result = tiny
    save_captioner(result.decoder, result.tokenizer, {"tower_sha256": "0" * 64}, tmp_path)
    with pytest.raises(ModelLoadError, match="trained on another emoji-lit tower"):
        load_model(f"builtin:emoji-captioner@{tmp_path}")
    (tmp_path / CARD_FILE).unlink()
    with pytest.raises(ModelLoadError, match="vlmops train --task caption"):
        load_model(f"builtin:emoji-captioner@{tmp_path}")
    card = json.loads((folder / CARD_FILE).read_text())
    assert card["decoder"]["vocab_size"] == result.tokenizer.get_vocab_size()


def test_detokenise():
    assert detokenise("keycap : #") == "keycap: #"
    assert detokenise("man ' s t - rex ( big )") == "man's t-rex (big)"


def test_cached_decoding_equals_recomputing_the_whole_sequence(tiny):
    """The key/value cache is an optimisation only: greedy tokens and log-probs equal a decoder that
    reruns prefix, prompt and answer so far at every step (mixed prompt lengths, left padding)."""
    from vlmops.models.captioner import BOS, EOS, PAD, _left_pad, image_features
    from vlmops.models.towers import pixels_from_images

    folder, train, _ = tiny
    model = load_model(f"builtin:emoji-captioner@{folder}")
    images = [Image.open(p) for p in train["image"][:4]]
    prompts = [
        "Describe this emoji.",
        "Is there a person?",
        "What skin tone is shown?",
        "Describe it, please now.",
    ]
    cached = model.generate(images, prompts, max_tokens=10)
    tok = model.tokenizer
    pad, bos, eos = (tok.token_to_id(t) for t in (PAD, BOS, EOS))
    with torch.inference_mode():
        grid, pooled = image_features(model.tower, pixels_from_images(images, model.tower.config.image_size))
        rows = [[*tok.encode(p).ids, bos] for p in prompts]
        ids, mask = _left_pad(rows, pad)
        done = torch.zeros(len(rows), dtype=torch.bool)
        chosen: list[list[tuple[int, float]]] = [[] for _ in rows]
        for _ in range(10):
            logp = torch.log_softmax(model.decoder(grid, pooled, ids, mask)[:, -1], -1)
            token = logp.argmax(-1).masked_fill(done, pad)
            for i in range(len(rows)):
                if not done[i]:
                    chosen[i].append((int(token[i]), float(logp[i, token[i]])))
            ids = torch.cat([ids, token[:, None]], 1)
            mask = torch.cat([mask, (~done).long()[:, None]], 1)
            done |= token == eos
    for answer, reference in zip(cached, chosen, strict=True):
        ref_ids = [t for t, _ in reference if t != eos]
        assert list(answer.token_ids) == ref_ids
        torch.testing.assert_close(
            torch.tensor(answer.token_logprobs),
            torch.tensor([lp for t, lp in reference if t != eos]),
            atol=1e-4,
            rtol=0,
        )


def test_the_shipped_captioner_names_and_answers_what_it_was_trained_on():
    """The weights in the package: the contract, and most answers right on training images."""
    model = load_model("builtin:emoji-captioner")
    check_generative(model)
    assert model.card["data"]["vendors"] == ["google", "twitter"] and model.card["quality"]["names"]
    manifest = load_emoji_manifest()
    seen = manifest[(manifest["vendor"] == "google") & (manifest["split"] == "train")].sample(
        60, random_state=0
    )
    images = [Image.open(path) for path in seen["image"]]
    names = model.generate(images, ["Describe this emoji."] * len(images))
    assert exact_match([a.text for a in names], [[n] for n in seen["name"]]).mean() >= 0.4  # 0.55 measured
    prompt, answer = QUESTIONS["person"]
    people = model.generate(images, [prompt] * len(images), max_tokens=2)
    truth = [[answer(row)] for _, row in seen.iterrows()]
    assert exact_match([a.text for a in people], truth).mean() >= 0.9  # 1.0 measured
