"""White-box FGSM/PGD through the image tower: the pixel-space protocol, the attack's constraints and
strength, a closed form for FGSM on a linear toy model, and the models that cannot be attacked."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from adapter_contract import sample_images
from test_adapters_hf import clip, clip_dir, siglip, siglip_dir  # noqa: F401  (module-scoped fixtures)
from vlmops.evaluate.adversarial import EPSILONS, adversarial_embeddings, attack, is_differentiable
from vlmops.evaluate.zeroshot import class_embeddings
from vlmops.models import load_model
from vlmops.models.base import DifferentiableVLM, ModelInfo, l2_normalise

EPS = 4 / 255
COLOURS = {"red": (230, 30, 30), "blue": (30, 60, 230), "green": (30, 170, 60), "yellow": (255, 215, 0)}
SHAPES = ("circle", "square", "triangle", "heart")
NAMES = [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]


def _shape_image(name: str, inset: int) -> Image.Image:
    """A flat-colour emoji-like shape on white, 48 px (the builtin tower's size)."""
    colour, shape = name.split()
    fill, o = COLOURS[colour], inset
    image = Image.new("RGB", (48, 48), "white")
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse((o, o, 48 - o, 48 - o), fill=fill)
    elif shape == "square":
        draw.rectangle((o, o, 48 - o, 48 - o), fill=fill)
    elif shape == "triangle":
        draw.polygon([(24, o), (o, 48 - o), (48 - o, 48 - o)], fill=fill)
    else:
        draw.ellipse((o, o, 26, 26), fill=fill)
        draw.ellipse((22, o, 48 - o, 26), fill=fill)
        draw.polygon([(o, 18), (48 - o, 18), (24, 48 - o)], fill=fill)
    return image


@pytest.fixture(scope="module")
def builtin():
    return load_model("builtin:emoji-lit")


@pytest.fixture(scope="module")
def shapes(builtin) -> tuple[list[Image.Image], np.ndarray, np.ndarray]:
    """32 shape images (two per class), their true class indices and the 16 class embeddings."""
    targets = np.arange(32) % len(NAMES)
    images = [_shape_image(NAMES[k], inset=3 + 3 * (i // len(NAMES))) for i, k in enumerate(targets)]
    return images, targets, class_embeddings(builtin, NAMES)


def _loss_and_accuracy(model, pixels: torch.Tensor, class_emb: np.ndarray, targets: np.ndarray):
    with torch.no_grad():
        logits = model.logit_scale * model.embed_pixels(pixels) @ torch.from_numpy(class_emb).T
    y = torch.from_numpy(targets)
    return torch.nn.functional.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


class LinearToy:
    """A DifferentiableVLM whose image tower is a fixed linear map then L2 normalisation (4 px input)."""

    def __init__(self, dim: int = 5, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.weight = rng.normal(size=(dim, 3 * 4 * 4))
        self.info = ModelInfo(name="toy", version="toy-1", dim=dim, uri="toy:linear")
        self.logit_scale = 10.0

    @property
    def transform_id(self) -> str:
        return "toy-4px"

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        arrays = [np.asarray(im.convert("RGB").resize((4, 4)), np.float32) / 255 for im in images]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        weight = torch.as_tensor(self.weight, dtype=pixels.dtype)
        return torch.nn.functional.normalize(pixels.flatten(1) @ weight.T, dim=-1)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.embed_pixels(self.pixels(images)).numpy()

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError


def test_epsilons_are_grey_levels():
    assert EPSILONS == (1 / 255, 2 / 255, 4 / 255)


def test_builtin_pixels_round_trip(builtin, shapes):
    images = [*sample_images(3), *shapes[0][:3]]
    x = builtin.pixels(images)
    assert isinstance(builtin, DifferentiableVLM)
    assert x.shape == (6, 3, 48, 48) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1 and x.max() == 1  # [0, 1], white background at exactly 1
    np.testing.assert_allclose(x.numpy() * 255, np.round(x.numpy() * 255), atol=1e-4)  # grey levels
    np.testing.assert_allclose(
        builtin.embed_pixels(x).detach().numpy(), builtin.embed_images(images), atol=1e-5
    )


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_hf_pixels_round_trip(name: str, request: pytest.FixtureRequest):
    model = request.getfixturevalue(name)
    images = sample_images(4, seed=3)
    x = model.pixels(images)
    assert is_differentiable(model) == (True, "")
    assert x.shape == (4, 3, 32, 32) and x.min() >= 0 and x.max() <= 1
    np.testing.assert_allclose(x.numpy() * 255, np.round(x.numpy() * 255), atol=1e-3)  # undone exactly
    np.testing.assert_allclose(model.embed_pixels(x).detach().numpy(), model.embed_images(images), atol=1e-5)
    adv = attack(model, x, np.eye(3, model.info.dim, dtype=np.float32), np.array([0, 1, 2, 0]), "pgd", EPS)
    assert (adv - x).abs().max() <= EPS + 1e-6 and not torch.equal(adv, x)


def test_fgsm_matches_the_closed_form_on_a_linear_model():
    """FGSM = clip(x + eps * sign(dL/dx)), with dL/dx derived by hand for normalize(W x)."""
    toy = LinearToy()
    x0 = toy.pixels(sample_images(6, seed=1))
    class_emb = l2_normalise(np.random.default_rng(2).normal(size=(3, toy.info.dim)))
    targets = np.array([0, 1, 2, 2, 1, 0])
    z = x0.double().flatten(1).numpy() @ toy.weight.T
    r = np.linalg.norm(z, axis=1, keepdims=True)
    e = z / r
    logits = toy.logit_scale * e @ class_emb.T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d_e = toy.logit_scale * (p - np.eye(3)[targets]) @ class_emb
    d_z = (d_e - e * (e * d_e).sum(1, keepdims=True)) / r
    grad = (d_z @ toy.weight).reshape(x0.shape)
    assert np.abs(grad).min() > 1e-7  # every sign well defined
    sign = torch.from_numpy(np.sign(grad)).float()
    for eps in EPSILONS:
        expected = (x0 + eps * sign).clamp(0, 1)
        torch.testing.assert_close(attack(toy, x0, class_emb, targets, "fgsm", eps), expected, atol=0, rtol=0)


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_attacks_stay_in_the_ball_and_the_box(builtin, shapes, method):
    images, targets, class_emb = shapes
    x0 = builtin.pixels(images[:4])
    for eps in (*EPSILONS, 0.1):
        adv = attack(builtin, x0, class_emb, targets[:4], method, eps, steps=3)
        assert adv.shape == x0.shape and adv.dtype == x0.dtype and not adv.requires_grad
        assert adv.min() >= 0 and adv.max() <= 1  # exact: white pixels (1.0) cannot go brighter
        delta = (adv - x0).abs()
        assert delta.max() <= eps + 1e-6  # float32 rounding of x0 ± eps only
        assert delta.max() >= eps - 1e-6  # the budget is used
    torch.testing.assert_close(attack(builtin, x0, class_emb, targets[:4], method, 0.0), x0, atol=0, rtol=0)


def test_pgd_beats_fgsm_beats_clean(builtin, shapes):
    images, targets, class_emb = shapes
    x0 = builtin.pixels(images)
    clean_loss, clean_acc = _loss_and_accuracy(builtin, x0, class_emb, targets)
    fgsm_loss, _ = _loss_and_accuracy(
        builtin, attack(builtin, x0, class_emb, targets, "fgsm", EPS), class_emb, targets
    )
    pgd = attack(builtin, x0, class_emb, targets, "pgd", EPS)
    pgd_loss, pgd_acc = _loss_and_accuracy(builtin, pgd, class_emb, targets)
    assert pgd_loss >= fgsm_loss > clean_loss
    assert pgd_acc <= clean_acc and clean_acc > 0.5
    strong = attack(
        builtin, x0, class_emb, targets, "pgd", 32 / 255, steps=5
    )  # a large budget breaks the model
    assert _loss_and_accuracy(builtin, strong, class_emb, targets)[1] <= 0.1


def test_no_parameter_gradients_and_eval_mode_restored(builtin, shapes):
    images, targets, class_emb = shapes
    x0 = builtin.pixels(images[:4])
    expected = attack(builtin, x0, class_emb, targets[:4], "pgd", EPS, steps=2)
    stats = [b.clone() for b in builtin.tower.buffers()]
    builtin.tower.train()  # dropout and BatchNorm updates would change the result and the model
    try:
        with torch.no_grad():  # attacks turn autograd back on for the input
            adv = attack(builtin, x0, class_emb, targets[:4], "pgd", EPS, steps=2)
        assert builtin.tower.training
    finally:
        builtin.tower.eval()
    torch.testing.assert_close(adv, expected, atol=0, rtol=0)
    assert all(p.grad is None for p in builtin.tower.parameters())
    assert all(torch.equal(a, b) for a, b in zip(stats, builtin.tower.buffers(), strict=True))


def test_deterministic_per_seed(builtin, shapes):
    images, targets, class_emb = shapes
    x0 = builtin.pixels(images[:4])
    run = lambda method, seed: attack(builtin, x0, class_emb, targets[:4], method, EPS, steps=2, seed=seed)  # noqa: E731
    assert torch.equal(run("pgd", 0), run("pgd", 0))
    assert not torch.equal(run("pgd", 0), run("pgd", 1))  # the random start depends on the seed
    assert torch.equal(run("fgsm", 0), run("fgsm", 1))  # FGSM has no randomness


def test_adversarial_embeddings_match_attack_in_batches(builtin, shapes):
    images, targets, class_emb = shapes
    images, targets = images[:7], targets[:7]
    emb = adversarial_embeddings(
        builtin, images, class_emb, targets, "pgd", EPS, steps=2, seed=5, batch_size=3
    )
    adv = attack(
        builtin, builtin.pixels(images), class_emb, targets, "pgd", EPS, steps=2, seed=5, batch_size=3
    )
    assert emb.shape == (7, builtin.info.dim) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb, builtin.embed_pixels(adv).detach().numpy(), atol=1e-5)
    assert np.abs(emb - builtin.embed_images(images)).max() > 1e-3  # not the clean embeddings
    empty = adversarial_embeddings(builtin, [], class_emb, np.array([], int), "fgsm", EPS)
    assert empty.shape == (0, builtin.info.dim)


def test_models_without_gradients_are_skipped_with_a_reason(fake_model):
    model = fake_model()
    ok, reason = is_differentiable(model)
    assert not ok and "fake:test" in reason and "does not expose gradients" in reason and "skipped" in reason
    with pytest.raises(TypeError, match="does not expose gradients"):
        adversarial_embeddings(model, sample_images(2), np.eye(2, 8), np.array([0, 1]), "fgsm", EPS)


def test_bad_arguments_are_errors():
    toy = LinearToy()
    x0, class_emb, targets = toy.pixels(sample_images(2)), np.eye(2, 5), np.array([0, 1])
    with pytest.raises(ValueError, match="unknown attack 'cw'"):
        attack(toy, x0, class_emb, targets, "cw", EPS)
    with pytest.raises(ValueError, match="targets of shape"):
        attack(toy, x0, class_emb, targets[:1], "pgd", EPS)
    with pytest.raises(ValueError, match="class indices"):
        attack(toy, x0, class_emb, np.array([0, 2]), "pgd", EPS)
    with pytest.raises(ValueError, match="eps >= 0"):
        attack(toy, x0, class_emb, targets, "pgd", -EPS)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        attack(toy, x0, class_emb, targets, "pgd", EPS)
