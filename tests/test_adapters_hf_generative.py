"""hf: generative models (LLaVA, Qwen2-VL, Idefics3, BLIP) against direct transformers calls.

Tiny random-weight models are built from configs with hand-made tokenizers and chat templates
(`hf_generative_models.py`); nothing is downloaded.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from PIL import Image

import hf_generative_models as builders
from adapter_contract import sample_images
from generative_contract import PROMPTS, check_generative
from vlmops.errors import GenerationError, ModelLoadError
from vlmops.models import capabilities, load_model
from vlmops.models.base import sha256_files
from vlmops.models.hf_generative import HFGenerativeModel
from vlmops.models.preprocess import to_rgb

FAMILIES = ["llava", "qwen2_vl", "idefics3", "blip"]
MAX_TOKENS = 10


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hfgen")
    return {name: getattr(builders, f"make_{name}_dir")(root) for name in FAMILIES}


@pytest.fixture(scope="module")
def models(dirs: dict[str, Path]) -> dict[str, HFGenerativeModel]:
    # batch_size 2: the five contract prompts run as 2 + 2 + 1, so padding and batch edges are exercised
    return {name: load_model(f"hf:{path}", batch_size=2) for name, path in dirs.items()}


@functools.cache
def _reference(name: str, path: Path) -> tuple:
    """The processor and model of `path`, loaded with transformers' own classes."""
    if name == "qwen2_vl":  # AutoProcessor needs torchvision for Qwen2-VL's (unused) video processor
        processor = builders.qwen2_vl_processor_class().from_pretrained(path, local_files_only=True)
    else:
        processor = transformers.AutoProcessor.from_pretrained(path, local_files_only=True)
    model = transformers.AutoModelForImageTextToText.from_pretrained(path, local_files_only=True)
    return processor, model.eval()


def _direct(name: str, path: Path, image: Image.Image, prompt: str, **generate_kw) -> dict:
    """One pair through the processor and model.generate, as transformers' docs do it (no padding)."""
    processor, model = _reference(name, path)
    text = prompt
    if name != "blip":
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    images = [[to_rgb(image)]] if name == "idefics3" else [to_rgb(image)]
    inputs = processor(images=images, text=[text], return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            max_new_tokens=MAX_TOKENS,
            return_dict_in_generate=True,
            output_logits=True,
            **generate_kw,
        )
    steps = len(out.logits)
    new = out.sequences[0, out.sequences.shape[1] - steps :]
    scores = model.compute_transition_scores(out.sequences, out.logits, normalize_logits=True)[0]
    return {
        "ids": new.tolist(),
        "text": processor.batch_decode(new[None], skip_special_tokens=True)[0],
        "logprobs": scores.tolist(),
        "prompt_tokens": out.sequences.shape[1] - steps,
    }


@pytest.mark.parametrize("name", FAMILIES)
def test_contract(name: str, models: dict[str, HFGenerativeModel]) -> None:
    check_generative(models[name])


@pytest.mark.parametrize("name", FAMILIES)
def test_matches_transformers_token_for_token(
    name: str, models: dict[str, HFGenerativeModel], dirs: dict[str, Path]
) -> None:
    images = sample_images(4, seed=3)
    prompts = PROMPTS[:4]
    answers = models[name].generate(images, prompts, max_tokens=MAX_TOKENS, logprobs=True)
    texts = set()
    for image, prompt, answer in zip(images, prompts, answers, strict=True):
        ref = _direct(name, dirs[name], image, prompt, do_sample=False)
        assert list(answer.token_ids) == ref["ids"], (name, prompt)
        assert answer.text == ref["text"]
        assert answer.token_logprobs == pytest.approx(ref["logprobs"], abs=1e-4)
        assert answer.usage.prompt_tokens == ref["prompt_tokens"]
        assert answer.usage.completion_tokens == len(ref["ids"])
        assert answer.tokens == tuple(models[name].tokenizer.convert_ids_to_tokens(ref["ids"]))
        ended = ref["ids"][-1] in models[name].stop_ids
        assert answer.finish_reason == ("stop" if ended else "length")
        texts.add(answer.text)
    assert len(texts) > 1, "a model whose answers ignore their inputs proves nothing here"


def test_prompt_uses_the_chat_template(models: dict[str, HFGenerativeModel]) -> None:
    assert models["llava"].prompt_text("Hi?") == "USER: <image>\nHi? ASSISTANT:"
    assert models["qwen2_vl"].prompt_text("Hi?").endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert models["blip"].prompt_text("a photo of") == "a photo of"


def test_sampling_is_seeded_like_transformers(
    models: dict[str, HFGenerativeModel], dirs: dict[str, Path]
) -> None:
    model, image = models["llava"], sample_images(1, seed=5)[0]
    state = torch.random.get_rng_state()
    first = model.generate([image], ["Describe it."], max_tokens=MAX_TOKENS, temperature=1.5, seed=7)[0]
    assert torch.equal(torch.random.get_rng_state(), state), "seeding must not touch the global generator"
    again = model.generate([image], ["Describe it."], max_tokens=MAX_TOKENS, temperature=1.5, seed=7)[0]
    other = model.generate([image], ["Describe it."], max_tokens=MAX_TOKENS, temperature=1.5, seed=8)[0]
    greedy = model.generate([image], ["Describe it."], max_tokens=MAX_TOKENS)[0]
    assert first.token_ids == again.token_ids
    assert first.token_ids not in (other.token_ids, greedy.token_ids)
    torch.manual_seed(7)
    ref = _direct("llava", dirs["llava"], image, "Describe it.", do_sample=True, temperature=1.5)
    torch.random.set_rng_state(state)
    assert list(first.token_ids) == ref["ids"]


def test_end_of_answer_stops_and_is_counted(dirs: dict[str, Path], tmp_path: Path) -> None:
    image, prompt = sample_images(1, seed=4)[0], "Describe it."
    greedy = load_model(f"hf:{dirs['llava']}").generate([image], [prompt], max_tokens=MAX_TOKENS)[0]
    assert greedy.finish_reason == "length" and len(greedy.token_ids) == MAX_TOKENS
    ids = list(greedy.token_ids)
    k = next(i for i in range(2, len(ids)) if ids[i] not in ids[:i])  # a token first produced at step k
    shutil.copytree(dirs["llava"], tmp_path / "m")
    config_file = tmp_path / "m" / "generation_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps(config | {"eos_token_id": ids[k]}))
    stopped = load_model(f"hf:{tmp_path / 'm'}").generate(
        [image], [prompt], max_tokens=MAX_TOKENS, logprobs=True
    )
    answer = stopped[0]
    assert answer.finish_reason == "stop"
    assert list(answer.token_ids) == ids[: k + 1]
    assert answer.usage.completion_tokens == k + 1 and len(answer.token_logprobs) == k + 1


def test_info_and_capabilities(models: dict[str, HFGenerativeModel], dirs: dict[str, Path]) -> None:
    llava = models["llava"]
    sha = sha256_files(sorted(dirs["llava"].glob("*.safetensors")))
    assert (llava.info.name, llava.info.version, llava.info.dim) == ("tiny-llava", f"hf-{sha[:12]}", 0)
    assert (llava.info.licence, llava.info.uri) == ("apache-2.0", f"hf:{dirs['llava'].resolve()}")
    assert models["qwen2_vl"].info.licence == "unknown"
    caps = capabilities(llava)
    assert caps == {"embed": False, "generate": True, "logprobs": True, "gradients": False}
    assert llava.transform_id != models["idefics3"].transform_id
    assert load_model(f"hf:{dirs['llava']}").transform_id == llava.transform_id


def test_missing_chat_template_is_an_error(dirs: dict[str, Path], tmp_path: Path) -> None:
    shutil.copytree(dirs["llava"], tmp_path / "m")
    (tmp_path / "m" / "chat_template.jinja").unlink()
    with pytest.raises(ModelLoadError, match=r"no chat template in .*'llava'.*chat_template.jinja"):
        load_model(f"hf:{tmp_path / 'm'}")


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        (("processor_config.json",), r"no image processor .*processor.save_pretrained"),
        (("tokenizer.json", "tokenizer_config.json"), r"no tokenizer files .*processor.save_pretrained"),
    ],
)
def test_missing_processor_parts_are_errors(
    dirs: dict[str, Path], tmp_path: Path, remove: tuple[str, ...], message: str
) -> None:
    shutil.copytree(dirs["qwen2_vl"], tmp_path / "m")
    for name in remove:
        (tmp_path / "m" / name).unlink()
    with pytest.raises(ModelLoadError, match=message):
        load_model(f"hf:{tmp_path / 'm'}")


def test_a_prompt_holding_the_image_token_is_a_clear_error(models: dict[str, HFGenerativeModel]) -> None:
    with pytest.raises(GenerationError, match=r"tiny-llava.*must not hold the model's special tokens"):
        models["llava"].generate(sample_images(1), ["what is <image>?"], max_tokens=2)
