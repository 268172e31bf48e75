"""Generative VLMs saved locally with transformers' ``save_pretrained``, behind `GenerativeVLM`.

``hf:DIR`` loads these when ``config.json``'s model type is one transformers serves through
``AutoModelForImageTextToText`` (tested: LLaVA, Qwen2-VL, Idefics3/SmolVLM, BLIP). Loading is offline;
the directory must hold the weights, a processor (image processor + tokenizer) and, for chat models,
a chat template. Prompts go through the processor's chat template as one user turn (the image, then
the text); BLIP has none and takes the prompt as the start of its caption ("" for an unconditional
one). Decoder-only families batch with left padding; BLIP, which cannot be padded, batches prompts of
equal token length. Greedy decoding at temperature 0, seeded sampling above it; other settings in the
folder's generation_config.json (repetition penalty, top-p...) apply as they do in transformers.
Prompt token counts include the image tokens of families that put them in the prompt (all but BLIP,
which attends to the image through cross-attention).

Without torchvision, transformers 5 cannot build the video processor of Qwen2-VL-style processors;
as image prompts never use it, such a processor is then loaded without its video part.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vlmops.errors import GenerationError, MissingDependencyError, ModelLoadError
from vlmops.models.base import Generation, ModelInfo, Usage, batched, check_generation_inputs, sha256_files
from vlmops.models.hf_dir import SAVE_HINT, check_loading_report, read_licence
from vlmops.models.preprocess import to_rgb


@dataclass(frozen=True)
class Family:
    """How one model family takes its prompts and images."""

    chat_template: bool = True  # prompts go through the processor's chat template
    nested_images: bool = False  # the processor wants one list of images per prompt
    pad_free: bool = False  # prompts cannot be padded: batch prompts of equal token length only
    stop_attrs: tuple[str, ...] = ()  # text-config attributes holding further end-of-answer ids


# model_type -> family; others in transformers' image-text-to-text mapping get the decoder-only default
FAMILIES: dict[str, Family] = {
    "blip": Family(chat_template=False, pad_free=True, stop_attrs=("sep_token_id",)),
    "idefics3": Family(nested_images=True),
    "smolvlm": Family(nested_images=True),
}
DEFAULT_FAMILY = Family()
TEMPLATE_HINT = (
    "save the processor with the chat template of the checkpoint the weights came from "
    "(`processor.chat_template = TEMPLATE; processor.save_pretrained(dir)` writes chat_template.jinja)"
)


def is_generative(model_type: str | None) -> bool:
    """Whether transformers loads `model_type` with AutoModelForImageTextToText."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


def _step_clock():
    """A stopping criterion that never stops: notes the prompt's width and the first step's time."""
    from transformers import StoppingCriteria

    class StepClock(StoppingCriteria):
        def __init__(self) -> None:
            self.start = time.perf_counter()
            self.first_seconds: float | None = None
            self.prompt_columns: int | None = None

        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs) -> torch.Tensor:
            if self.first_seconds is None:
                self.first_seconds = time.perf_counter() - self.start
                self.prompt_columns = int(input_ids.shape[1]) - 1
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return StepClock()


class HFGenerativeModel:
    """A transformers image-text-to-text model answering prompts about images."""

    exposes_logprobs = True

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        info: ModelInfo,
        model_type: str,
        device: str = "cpu",
        batch_size: int = 8,
    ) -> None:
        if batch_size < 1:
            raise ModelLoadError(f"batch_size must be at least 1, got {batch_size}")
        self.model, self.processor, self.info = model, processor, info
        self.model_type, self.device, self.batch_size = model_type, device, batch_size
        self.family = FAMILIES.get(model_type, DEFAULT_FAMILY)
        self.tokenizer = processor.tokenizer
        if not self.family.pad_free:
            self.tokenizer.padding_side = "left"  # decoder-only: new tokens follow every prompt directly
        self.stop_ids = _stop_ids(model)
        digest = hashlib.sha256(json.dumps(processor.to_dict(), sort_keys=True, default=str).encode())
        digest.update((getattr(processor, "chat_template", None) or "").encode())
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        digest.update((backend.to_str() if backend is not None else str(self.tokenizer.get_vocab())).encode())
        self._transform_id = f"hf-gen-{digest.hexdigest()[:12]}"

    @property
    def transform_id(self) -> str:
        """Hash of the processor's configuration, chat template and tokenizer (inputs to tokens)."""
        return self._transform_id

    def prompt_text(self, prompt: str) -> str:
        """The text the processor gets for `prompt`: one chat turn with the image, or the bare prompt."""
        if not self.family.chat_template:
            return prompt
        content = [{"type": "image"}, {"type": "text", "text": prompt}]
        messages = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def generate(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        *,
        max_tokens: int = 64,
        temperature: float = 0.0,
        seed: int | None = None,
        logprobs: bool = False,
    ) -> list[Generation]:
        """One answer per (image, prompt) pair, `batch_size` pairs per model call, in input order.

        Token ids end with the end-of-answer token where the model produced one; log-probabilities are
        the model's own (log-softmax of its logits, before temperature), one per token id. Sampling
        with a seed repeats itself for the same inputs and batch size.
        """
        check_generation_inputs(images, prompts, max_tokens)
        if temperature < 0:
            raise ValueError(f"temperature must be at least 0, got {temperature}")
        rgb = [to_rgb(im) for im in images]
        texts = [self.prompt_text(p) for p in prompts]
        answers: list[Generation | None] = [None] * len(rgb)
        options = {"max_tokens": max_tokens, "temperature": temperature, "logprobs": logprobs}
        device = torch.device(self.device)
        gpus = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=gpus):
            if seed is not None:
                torch.manual_seed(seed)
            for rows in self._batches(texts):
                batch = self._generate_batch([rgb[i] for i in rows], [texts[i] for i in rows], **options)
                for i, answer in zip(rows, batch, strict=True):
                    answers[i] = answer
        return answers  # type: ignore[return-value]

    def _batches(self, texts: list[str]) -> list[list[int]]:
        """Row indices per model call: consecutive rows, or rows of equal prompt length (pad-free)."""
        rows = list(range(len(texts)))
        if not self.family.pad_free:
            return [list(b) for b in batched(rows, self.batch_size)]
        groups: dict[int, list[int]] = {}
        for i, text in enumerate(texts):
            groups.setdefault(len(self.tokenizer(text)["input_ids"]), []).append(i)
        return [list(b) for group in groups.values() for b in batched(group, self.batch_size)]

    def _inputs(self, images: list[Image.Image], texts: list[str]) -> dict:
        pictures = [[im] for im in images] if self.family.nested_images else images
        try:
            inputs = self.processor(images=pictures, text=texts, padding=True, return_tensors="pt")
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise GenerationError(
                f"the processor of {self.info.name} cannot prepare these inputs "
                f"({type(exc).__name__}: {exc}); a prompt must not hold the model's special tokens (e.g. its "
                "image token): vlmops places the image itself"
            ) from exc
        dtype = next(self.model.parameters()).dtype
        return {
            k: v.to(self.device, dtype=dtype) if v.is_floating_point() else v.to(self.device)
            for k, v in inputs.items()
        }

    def _generate_batch(
        self,
        images: list[Image.Image],
        texts: list[str],
        *,
        max_tokens: int,
        temperature: float,
        logprobs: bool,
    ) -> list[Generation]:
        inputs = self._inputs(images, texts)
        from transformers import StoppingCriteriaList

        clock = _step_clock()
        sampling = (
            {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        )
        try:
            with torch.inference_mode():
                out = self.model.generate(
                    **inputs,
                    **sampling,
                    max_new_tokens=max_tokens,
                    num_beams=1,
                    return_dict_in_generate=True,
                    output_logits=logprobs,
                    stopping_criteria=StoppingCriteriaList([clock]),
                )
        except (RuntimeError, ValueError, IndexError) as exc:
            raise GenerationError(
                f"{self.info.name} failed to generate ({type(exc).__name__}: {exc}); "
                "shorten the prompt or lower max_tokens and batch_size"
            ) from exc
        seconds = time.perf_counter() - clock.start
        prompt_columns = clock.prompt_columns if clock.prompt_columns is not None else out.sequences.shape[1]
        new = out.sequences[:, prompt_columns:]
        scores = None
        if logprobs and new.shape[1]:
            scores = self.model.compute_transition_scores(out.sequences, out.logits, normalize_logits=True)
        mask = inputs.get("attention_mask")
        answers = []
        for row in range(new.shape[0]):
            ids = new[row].tolist()
            end = next((j + 1 for j, t in enumerate(ids) if t in self.stop_ids), None)
            ids = ids[:end] if end is not None else ids
            pads = 0 if mask is None else int(mask.shape[1] - mask[row].sum())
            answers.append(
                Generation(
                    text=self.tokenizer.decode(ids, skip_special_tokens=True),
                    finish_reason="stop" if end is not None or len(ids) < max_tokens else "length",
                    usage=Usage(prompt_columns - pads, len(ids)),
                    seconds=seconds,
                    token_ids=tuple(ids),
                    tokens=tuple(self.tokenizer.convert_ids_to_tokens(ids)),
                    token_logprobs=None
                    if scores is None
                    else tuple(scores[row, : len(ids)].float().tolist()),
                    first_token_seconds=clock.first_seconds,
                )
            )
        return answers


def _stop_ids(model: torch.nn.Module) -> set[int]:
    """Token ids that end an answer: the generation config's EOS ids and the family's extra ones."""
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    text_config = getattr(model.config, "text_config", model.config)
    family = FAMILIES.get(model.config.model_type, DEFAULT_FAMILY)
    for attr in family.stop_attrs:
        value = getattr(text_config, attr, None)
        if value is not None:
            ids.add(int(value))
    return ids


def _load_processor(path: Path) -> Any:
    """AutoProcessor from `path`; where transformers needs torchvision for a video processor that image
    prompts never use (Qwen2-VL and kin), the same processor class without its video part."""
    import transformers

    try:
        return transformers.AutoProcessor.from_pretrained(path, local_files_only=True)
    except (ImportError, AttributeError, TypeError, ValueError, OSError) as exc:
        if importlib.util.find_spec("torchvision") is not None:
            raise
        name = _processor_class_name(path)
        cls = getattr(transformers, name, None) if name else None
        if cls is None or "video_processor" not in cls.get_attributes():
            raise
        try:
            return _image_only(cls).from_pretrained(path, local_files_only=True)
        except Exception as inner:
            raise MissingDependencyError(
                f"the {name} in {path} needs torchvision to load ({exc}); "
                "pip install torchvision (the build matching your torch)"
            ) from inner


def _processor_class_name(path: Path) -> str | None:
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        file = path / name
        if file.is_file():
            value = json.loads(file.read_text(encoding="utf-8")).get("processor_class")
            if value:
                return str(value)
    return None


def _image_only(cls: type) -> type:
    """`cls` with image processor and tokenizer only: transformers reads a processor's parts from the
    signature of its __init__, so the video processor is neither loaded nor checked."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        cls.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

    return type(cls.__name__, (cls,), {"__init__": __init__, "__module__": __name__})


def load(path: Path, model_type: str, weights: list[Path], device: str = "cpu", batch_size: int = 8):
    """Load an image-text-to-text model and its processor from a checked save_pretrained directory."""
    import transformers

    try:
        model, report = transformers.AutoModelForImageTextToText.from_pretrained(
            path, local_files_only=True, output_loading_info=True
        )
        processor = _load_processor(path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelLoadError(f"cannot load hf model from {path}: {exc}; {SAVE_HINT}") from exc
    check_loading_report(report, path)
    if getattr(processor, "tokenizer", None) is None:
        raise ModelLoadError(f"the processor in {path} has no tokenizer; {SAVE_HINT}")
    family = FAMILIES.get(model_type, DEFAULT_FAMILY)
    if family.chat_template and not getattr(processor, "chat_template", None):
        raise ModelLoadError(f"no chat template in {path} for its {model_type!r} model; {TEMPLATE_HINT}")
    weights_sha = sha256_files(weights)
    vision = getattr(model.config, "vision_config", None)
    size = getattr(vision, "image_size", None)
    info = ModelInfo(
        name=path.name,
        version=f"hf-{weights_sha[:12]}",
        dim=0,
        uri=f"hf:{path}",
        weights_sha256=weights_sha,
        licence=read_licence(path),
        image_size=int(size) if isinstance(size, int) else None,
    )
    return HFGenerativeModel(model.to(device).eval(), processor, info, model_type, device, batch_size)
