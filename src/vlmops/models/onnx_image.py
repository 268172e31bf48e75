"""Runtime ``onnx-image``: a built-in LiT model whose image tower runs under ONNX Runtime, the rest torch.

The image tower is exported to ONNX in memory when the model loads (under a second for emoji-lit: no
export step, no cache folder) and checked against torch on a few images before it is used. The two
compute the same function with the same weights and agree to float32 rounding (max abs difference
~2e-7 on unit vectors, the size of torch's own differences between batch sizes), so the model keeps its
version: its vectors, embedding-cache entries, calibrations and galleries are the torch model's. A
larger difference than `PARITY_ATOL` refuses the runtime instead of serving other vectors under the
same version.

Why: ONNX Runtime runs a whole batch in one C++ call with the GIL released (torch takes it back after
every op, which a server's event loop then waits on), and costs a fifth of torch's CPU per image at
batch 1 (bench/RESULTS.md). The text tower (labels are embedded once and cached by the gateway) and
`embed_pixels` (differentiable, for white-box attacks) stay torch.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from vlmops.errors import ModelLoadError
from vlmops.models.base import VLM, batched, l2_normalise
from vlmops.models.builtin import EmojiLit
from vlmops.models.onnx import session
from vlmops.models.preprocess import pixel_array

RUNTIME = "onnx-image"
PARITY_ATOL = 1e-5  # on unit vectors; float32 rounding gives ~2e-7


class OnnxImageLit(EmojiLit):
    """An `EmojiLit` whose `embed_images` runs an ONNX Runtime session of its (torch) image tower."""

    runtime = RUNTIME

    def __init__(self, source: EmojiLit, image_session) -> None:
        super().__init__(
            source.tower,
            source.logit_scale,
            source.info,
            text_tower=source.text_tower,
            batch_size=source.batch_size,
            card=source.card,
        )
        self.image_session = image_session

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, d) float32 unit vectors, one ONNX Runtime call per batch (the GIL released during it)."""
        size = self.tower.config.image_size
        chunks = [np.zeros((0, self.info.dim), dtype=np.float32)]
        for batch in batched(list(images), self.batch_size):
            chunks.append(self.image_session.run(None, {"pixels": pixel_array(batch, size)})[0])
        return l2_normalise(np.concatenate(chunks))


def onnx_images(model: VLM, threads: int | None = None) -> OnnxImageLit:
    """`model` (a built-in LiT model) with its image tower run by ONNX Runtime, same version."""
    from vlmops.models.onnx_export import _export_image, _synthetic_images

    if not isinstance(model, EmojiLit):
        raise ModelLoadError(
            f"runtime {RUNTIME} supports the built-in LiT models (builtin:emoji-lit, builtin:emoji-lit@DIR), "
            f"not {model.info.uri}; use runtime torch"
        )
    size = model.tower.config.image_size
    sample = _synthetic_images(size)
    buffer = io.BytesIO()
    _export_image(model.tower.eval(), buffer, pixel_array(sample[:2], size))
    fast = OnnxImageLit(model, session(buffer.getvalue(), threads))
    diff = float(np.abs(fast.embed_images(sample) - model.embed_images(sample)).max())
    if not diff <= PARITY_ATOL:
        raise ModelLoadError(
            f"the ONNX Runtime image tower of {model.info.uri} differs from torch by {diff:.2e} "
            f"(> {PARITY_ATOL:g}); serve it with --runtime torch and report your torch and onnxruntime "
            "versions"
        )
    return fast
