"""Tiny random generative VLMs (LLaVA, Qwen2-VL, Idefics3, BLIP) saved with their processors, for tests.

Everything is built here from configs: byte-level tokenizers without merges (any text round-trips),
the families' special tokens, and short Jinja chat templates in each family's style. No downloads.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

TEXT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    initializer_range=0.3,
)

LLAVA_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() }}: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ part['text'] }}{% endif %}{% endfor %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def byte_tokenizer(
    specials: list[str], *, bos: str, eos: str, pad: str
) -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with no merges (256 byte tokens) plus `specials`, ids after the bytes."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {char: i for i, char in enumerate(alphabet)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos, pad_token=pad, model_max_length=512
    )
    extra = [t for t in specials if t not in (bos, eos, pad)]
    tokenizer.add_special_tokens({"additional_special_tokens": extra})
    return tokenizer


def _vocab_size(tokenizer: transformers.PreTrainedTokenizerBase) -> int:
    return len(tokenizer.get_vocab())


def make_llava_dir(root: Path) -> Path:
    """A tiny random LLaVA (CLIP vision tower, Llama decoder) with a chat template, under `root`."""
    torch.manual_seed(10)
    tokenizer = byte_tokenizer(["<s>", "</s>", "<pad>", "<image>"], bos="<s>", eos="</s>", pad="<pad>")
    ids = tokenizer.convert_tokens_to_ids
    text = transformers.LlamaConfig(
        **TEXT,
        vocab_size=_vocab_size(tokenizer),
        bos_token_id=ids("<s>"),
        eos_token_id=ids("</s>"),
        pad_token_id=ids("<pad>"),
    )
    vision = transformers.CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=32,
        initializer_factor=3.0,
    )
    config = transformers.LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=ids("<image>"),
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    path = root / "tiny-llava"
    model = transformers.LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = ids("<pad>")
    model.save_pretrained(path)
    image_processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    processor = transformers.LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE,
    )
    processor.save_pretrained(path)
    (path / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny llava\n")
    return path


def make_qwen2_vl_dir(root: Path) -> Path:
    """A tiny random Qwen2-VL (patch 4, 2x2 merge, multimodal rotary sections) with a chat template."""
    torch.manual_seed(11)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"]
    specials += ["<|image_pad|>", "<|video_pad|>"]
    tokenizer = byte_tokenizer(specials, bos="<|im_start|>", eos="<|im_end|>", pad="<|endoftext|>")
    ids = tokenizer.convert_tokens_to_ids
    text = dict(
        TEXT,
        vocab_size=_vocab_size(tokenizer),
        bos_token_id=ids("<|im_start|>"),
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids("<|endoftext|>"),
        rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0},
    )
    vision = dict(
        depth=1,
        embed_dim=32,
        hidden_size=32,
        num_heads=4,
        mlp_ratio=2,
        patch_size=4,
        spatial_merge_size=2,
        temporal_patch_size=2,
        initializer_range=0.3,
    )
    config = transformers.Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    path = root / "tiny-qwen2-vl"
    model = transformers.Qwen2VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = ids("<|endoftext|>")
    model.save_pretrained(path)
    image_processor = transformers.Qwen2VLImageProcessor(
        patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=8 * 8, max_pixels=24 * 24
    )
    processor = qwen2_vl_processor_class()(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN_TEMPLATE
    )
    processor.save_pretrained(path)
    return path


def make_idefics3_dir(root: Path) -> Path:
    """A tiny random Idefics3 (SmolVLM's architecture) that splits images into 32-pixel tiles."""
    torch.manual_seed(12)
    specials = ["<|im_start|>", "<end_of_utterance>", "<|endoftext|>", "<fake_token_around_image>"]
    specials += ["<image>", "<global-img>"] + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    tokenizer = byte_tokenizer(specials, bos="<|im_start|>", eos="<end_of_utterance>", pad="<|endoftext|>")
    ids = tokenizer.convert_tokens_to_ids
    text = dict(
        TEXT,
        model_type="llama",
        vocab_size=_vocab_size(tokenizer),
        bos_token_id=ids("<|im_start|>"),
        eos_token_id=ids("<end_of_utterance>"),
        pad_token_id=ids("<|endoftext|>"),
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        initializer_range=0.3,
    )
    config = transformers.Idefics3Config(
        text_config=text,
        vision_config=vision,
        image_token_id=ids("<image>"),
        scale_factor=2,
        pad_token_id=ids("<|endoftext|>"),
    )
    path = root / "tiny-idefics3"
    model = transformers.Idefics3ForConditionalGeneration(config)
    model.generation_config.pad_token_id = ids("<|endoftext|>")
    model.save_pretrained(path)
    image_processor = transformers.Idefics3ImageProcessor(
        size={"longest_edge": 64},
        max_image_size={"longest_edge": 32},
        do_image_splitting=True,
    )
    processor = transformers.Idefics3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4, chat_template=IDEFICS3_TEMPLATE
    )
    processor.save_pretrained(path)
    return path


def make_blip_dir(root: Path) -> Path:
    """A tiny random BLIP captioner with a WordPiece tokenizer over letters (no chat template)."""
    torch.manual_seed(13)
    path = root / "tiny-blip"
    path.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *letters, *(f"##{c}" for c in letters)]
    vocab += [".", ",", "?", "!", "'"]
    vocab_file = root / "blip-vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizer(str(vocab_file), model_max_length=64)
    text = dict(
        vocab_size=len(vocab),
        hidden_size=32,
        encoder_hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        max_position_embeddings=128,
        bos_token_id=5,
        eos_token_id=3,
        sep_token_id=3,
        pad_token_id=0,
        initializer_range=0.3,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        initializer_range=0.3,
    )
    config = transformers.BlipConfig(
        text_config=text, vision_config=vision, projection_dim=32, image_text_hidden_size=32
    )
    transformers.BlipForConditionalGeneration(config).save_pretrained(path)
    image_processor = transformers.BlipImageProcessor(size={"height": 32, "width": 32})
    transformers.BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


def qwen2_vl_processor_class() -> type:
    """Qwen2VLProcessor, or where torchvision is missing (transformers then cannot build its video
    processor) the same class without the video part, saved under the same processor_class name."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is not None:
        return transformers.Qwen2VLProcessor

    class Qwen2VLProcessor(transformers.Qwen2VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    return Qwen2VLProcessor
