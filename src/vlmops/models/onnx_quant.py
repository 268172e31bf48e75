"""ONNX Runtime quantization of an exported bundle's towers, in place (used by `onnx_export`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from vlmops.models.base import batched
from vlmops.models.preprocess import pixel_array

CALIBRATION_BATCH = 32


@dataclass(frozen=True)
class Int8Recipe:
    """What the int8 bundle quantizes; defaults picked by bench/quant.py on a 2-core AVX2 CPU."""

    image_ops: tuple[str, ...] = ("Conv",)  # GELU, BatchNorm, residual adds and the head stay fp32
    skip_first_conv: bool = (
        True  # the 3-channel stem on raw pixels: int8 there gains no speed, a bit of cosine
    )
    per_channel: bool = True  # one weight scale per output channel
    reduce_range: bool = True  # 7-bit weights: u8 x s8 kernels without VNNI saturate int16 otherwise
    quant_format: str = "QDQ"  # or "QOperator"
    # dynamic int8 MiniLM: -1 to -2.5 pp zero-shot top-1 on emoji, and its activation scale is set per
    # batch, so a text's vector depends on its batch-mates; opt-in only
    text: bool = False

    def to_dict(self) -> dict:
        """Plain dict for bundle.json."""
        return {**asdict(self), "image_ops": list(self.image_ops)}


def quantize_image(
    path: Path, images: Sequence[Image.Image], size: int, recipe: Int8Recipe, progress: bool = False
) -> dict:
    """Static int8 quantization of the image graph at `path`, calibrated (min/max) on `images`."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from vlmops.progress import progress_bar

    batches = list(batched(list(images), CALIBRATION_BATCH))

    class Reader(CalibrationDataReader):
        def __init__(self, advance):
            self.batches, self.advance = iter(batches), advance

        def get_next(self):
            batch = next(self.batches, None)
            if batch is None:
                return None
            self.advance(len(batch))
            return {"pixels": pixel_array(batch, size)}

    prepared = path.with_name("image.pre.onnx")
    with _quiet():
        quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
        excluded = [_first_conv(prepared)] if recipe.skip_first_conv else []
        with progress_bar(progress) as bar:
            task = bar.add_task("int8 calibration", total=len(images))
            quantize_static(
                str(prepared),
                str(path),
                Reader(lambda n: bar.advance(task, n)),
                quant_format=getattr(QuantFormat, recipe.quant_format),
                op_types_to_quantize=list(recipe.image_ops),
                nodes_to_exclude=excluded,
                per_channel=recipe.per_channel,
                reduce_range=recipe.reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
    prepared.unlink()
    return {
        "method": "static",
        "format": recipe.quant_format,
        "ops": list(recipe.image_ops),
        "excluded_nodes": excluded,
        "activations": "uint8",
        "weights": "int8 per-channel" if recipe.per_channel else "int8 per-tensor",
        "reduce_range": recipe.reduce_range,
        "calibration": {"method": "minmax", "n_images": len(images)},
    }


def _first_conv(path: Path) -> str:
    """Name of the Conv node that reads the graph's input (the stem)."""
    import onnx

    graph = onnx.load(str(path)).graph
    inputs = {i.name for i in graph.input}
    return next(n.name for n in graph.node if n.op_type == "Conv" and n.input[0] in inputs)


def quantize_text(path: Path) -> dict:
    """Dynamic int8 quantization (int8 per-channel weights, activations at run time) of the text graph."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = path.with_name("text.pre.onnx")
    with _quiet():
        quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
        quantize_dynamic(
            str(prepared),
            str(path),
            weight_type=QuantType.QInt8,
            per_channel=True,
            extra_options={"MatMulConstBOnly": True},
        )
    prepared.unlink()
    return {"method": "dynamic", "ops": ["MatMul"], "weights": "int8 per-channel", "activations": "uint8"}


class _quiet:
    """Silence the quantizer's root-logger warnings (e.g. per-channel axis notes on BatchNorm)."""

    def __enter__(self):
        self.level = logging.root.manager.disable
        logging.disable(logging.WARNING)

    def __exit__(self, *exc):
        logging.disable(self.level)
