"""White-box L-infinity attacks (FGSM, PGD) through a model's image tower and its zero-shot head.

Untargeted: each image's pixels move within an ε-ball (in [0, 1] pixel space, so ε = k/255 is k grey
levels) to maximise the cross-entropy of ``logit_scale * embed_pixels(x) @ class_emb.T`` against the
true class. Class embeddings (from the text tower) are constants. PGD follows Madry et al. (2018):
a seeded uniform random start in the ball, `steps` signed-gradient steps of 2.5 ε / steps, each
projected back onto the ball and the [0, 1] box. Gradients flow to the input only, never into
model parameters, and the model runs in eval mode.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image

from vlmops.models.base import DifferentiableVLM, l2_normalise

EPSILONS = (1 / 255, 2 / 255, 4 / 255)
METHODS = ("fgsm", "pgd")


def is_differentiable(model: object) -> tuple[bool, str]:
    """(True, "") when `model` exposes pixel gradients, else (False, why robustness is skipped)."""
    if isinstance(model, DifferentiableVLM):
        return True, ""
    info = getattr(model, "info", None)
    uri = getattr(info, "uri", None) or type(model).__name__
    return False, (
        f"model {uri} does not expose gradients (an HTTP or ONNX runtime, or an adapter without "
        "pixels/embed_pixels); adversarial robustness is skipped"
    )


def attack(
    model: DifferentiableVLM,
    pixels: torch.Tensor,
    class_emb: np.ndarray,
    targets: np.ndarray,
    method: str,
    eps: float,
    steps: int = 10,
    seed: int = 0,
    batch_size: int = 64,
) -> torch.Tensor:
    """Adversarial copies of `pixels` (n, 3, H, W) in [0, 1], each within `eps` (L-inf) of its input."""
    _check(model, method, eps, steps, batch_size)
    y = _targets(targets, len(pixels), len(class_emb))
    generator = torch.Generator().manual_seed(seed)
    chunks = [pixels[:0].detach().clone()]
    with _eval_mode(model):
        for i in range(0, len(pixels), batch_size):
            batch, batch_y = pixels[i : i + batch_size], y[i : i + batch_size]
            chunks.append(_attack_batch(model, batch, class_emb, batch_y, method, eps, steps, generator))
    return torch.cat(chunks)


def adversarial_embeddings(
    model: DifferentiableVLM,
    images: Sequence[Image.Image],
    class_emb: np.ndarray,
    targets: np.ndarray,
    method: str,
    eps: float,
    steps: int = 10,
    seed: int = 0,
    batch_size: int = 64,
) -> np.ndarray:
    """(n, d) float32 unit rows of the attacked images, to cache and score like clean embeddings.

    Equal to embedding ``attack(model, model.pixels(images), ...)`` with the same seed and batch size;
    pixels are made one batch at a time to bound memory.
    """
    _check(model, method, eps, steps, batch_size)
    y = _targets(targets, len(images), len(class_emb))
    generator = torch.Generator().manual_seed(seed)
    chunks = [np.zeros((0, model.info.dim), dtype=np.float32)]
    with _eval_mode(model):
        for i in range(0, len(images), batch_size):
            x0 = model.pixels(list(images[i : i + batch_size]))
            adv = _attack_batch(model, x0, class_emb, y[i : i + batch_size], method, eps, steps, generator)
            with torch.no_grad():
                chunks.append(model.embed_pixels(adv).float().cpu().numpy())
    return l2_normalise(np.concatenate(chunks))


def _attack_batch(
    model: DifferentiableVLM,
    x0: torch.Tensor,
    class_emb: np.ndarray,
    targets: torch.Tensor,
    method: str,
    eps: float,
    steps: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """One batch of FGSM or PGD; `generator` (CPU) draws PGD's random start."""
    x0 = x0.detach()
    classes = torch.as_tensor(np.asarray(class_emb, dtype=np.float32))

    def gradient(x: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            emb = model.embed_pixels(x)
            logits = model.logit_scale * emb.float() @ classes.to(emb.device).T
            loss = torch.nn.functional.cross_entropy(logits, targets.to(emb.device), reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)  # the input only: parameters' .grad stay untouched
        return grad

    if method == "fgsm":
        return (x0 + eps * gradient(x0).sign()).clamp(0.0, 1.0)
    alpha = 2.5 * eps / steps
    noise = (torch.rand(x0.shape, generator=generator) * 2.0 - 1.0) * eps
    x = (x0 + noise.to(x0.device, x0.dtype)).clamp(0.0, 1.0)
    for _ in range(steps):
        x = x + alpha * gradient(x).sign()
        x = torch.minimum(torch.maximum(x, x0 - eps), x0 + eps).clamp(0.0, 1.0)
    return x


def _check(model: object, method: str, eps: float, steps: int, batch_size: int) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown attack {method!r}; use one of {METHODS}")
    if not eps >= 0 or steps < 1 or batch_size < 1:
        raise ValueError(f"need eps >= 0, steps >= 1, batch_size >= 1; got {eps}, {steps}, {batch_size}")
    if torch.is_inference_mode_enabled():
        raise RuntimeError("attacks need autograd: do not call them under torch.inference_mode()")
    ok, why = is_differentiable(model)
    if not ok:
        raise TypeError(why)


def _targets(targets: np.ndarray, n: int, n_classes: int) -> torch.Tensor:
    """True class indices as a long tensor, checked against the number of images and classes."""
    y = np.asarray(targets)
    if y.shape != (n,):
        raise ValueError(f"{n} images but targets of shape {y.shape}")
    if n and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"targets must be integer class indices in [0, {n_classes})")
    return torch.as_tensor(y, dtype=torch.long)


@contextmanager
def _eval_mode(model: object) -> Iterator[None]:
    """Run the model's torch modules in eval mode (no dropout, frozen BatchNorm statistics), then restore."""
    tops = [m for m in getattr(model, "__dict__", {}).values() if isinstance(m, torch.nn.Module)]
    modes = {m: m.training for top in tops for m in top.modules()}
    for module in tops:
        module.eval()
    try:
        yield
    finally:
        for module, mode in modes.items():
            module.training = mode
