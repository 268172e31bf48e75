"""The eval sections' own logic: task building, prompts, typographic drawing, rules, AUC, cost, invariance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from eval_data import write_manifest
from vlmops.data.manifest import load_manifest
from vlmops.errors import DataError
from vlmops.evaluate.efficiency import batch_invariance_section, count_parameters
from vlmops.evaluate.headline import HEADLINE
from vlmops.evaluate.privacy import auc_ci, roc_auc, training_membership
from vlmops.evaluate.task import build_task, prompt_name
from vlmops.evaluate.text_robustness import synonyms_from_tags, typo
from vlmops.evaluate.typographic import write_label, wrong_targets
from vlmops.evaluate.uncertainty import halves
from vlmops.models.base import l2_normalise
from vlmops.report.rules import RuleError, check_rules, parse_rules


@pytest.fixture(scope="module")
def frame(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return load_manifest(write_manifest(tmp_path_factory.mktemp("shapes"), per_class=4))


def test_task_classes_tiers_and_clusters(frame: pd.DataFrame) -> None:
    task = build_task(frame, cluster_by="concept")
    assert task.tier_names == ("level1", "level2")
    assert task.classes == sorted(set(frame["label"]))
    assert task.class_names == [c.split("/")[1] for c in task.classes]
    assert [task.classes[t] for t in task.targets] == list(frame["label"])
    assert len(np.unique(task.clusters)) == frame["concept"].nunique()
    coarse = build_task(frame, tier="level1")
    assert coarse.classes == ["round", "square"] and coarse.tier_names == ("level1",)
    assert build_task(frame).templates == ("a photo of {}.",)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tier": "species"}, "unknown label tier 'species'"),
        ({"split": "val"}, "split 'val' not in the data"),
        ({"templates": ["no slot"]}, "needs exactly one '{}'"),
        ({"cluster_by": "nope"}, "--cluster-by 'nope' is not a column"),
    ],
)
def test_task_bad_input(frame: pd.DataFrame, kwargs: dict, message: str) -> None:
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace("{", r"\{").replace("}", r"\}")):
        build_task(frame, **kwargs)


def test_task_unlabelled_rows_are_an_error(frame: pd.DataFrame) -> None:
    broken = frame.copy()
    broken.loc[0, "label"] = None
    with pytest.raises(DataError, match="1 rows have no label"):
        build_task(broken)


def test_prompt_name() -> None:
    assert prompt_name("face-smiling") == "face smiling"
    assert prompt_name("keycap: #") == "keycap: #"


def test_typo_is_one_seeded_edit() -> None:
    for name in ["grinning face", "thumbs up", "red heart", "octopus"]:
        changed = typo(name, seed=3)
        assert changed == typo(name, seed=3) and changed != name
        assert abs(len(changed) - len(name)) <= 1
        diff = sum(a != b for a, b in zip(changed, name, strict=False))
        assert diff <= 2 or len(changed) != len(name)
    assert typo("ok", seed=0) == "ok"  # nothing of 4+ letters to edit


def test_synonyms_pick_the_most_frequent_other_tag() -> None:
    tags = {"a/cat": [["kitty", "cat"], ["kitty"], ["feline"]], "a/dog": [["dog"]]}
    assert synonyms_from_tags(["a/cat", "a/dog"], ["cat", "dog"], tags) == ["kitty", "dog"]


def test_write_label_draws_only_in_the_band() -> None:
    image = Image.new("RGB", (60, 60), (200, 10, 10))
    out = np.asarray(write_label(image, "thumbs up")).astype(int)
    assert out.shape == (60, 60, 3)
    assert (out[:40] == [200, 10, 10]).all()  # the top 70 % is untouched
    band = out[42:]
    assert (band == 255).all(axis=2).mean() > 0.5 and (band < 100).all(axis=2).any()  # white band with ink
    blank = np.asarray(write_label(image, "")).astype(int)
    assert (blank[:40] == [200, 10, 10]).all() and (blank[42:] == 255).all()


def test_wrong_targets_never_hit_the_truth() -> None:
    targets = np.random.default_rng(0).integers(0, 7, 5000)
    wrong = wrong_targets(targets, 7, seed=1)
    assert (wrong != targets).all() and set(wrong) == set(range(7))


def test_halves_partition() -> None:
    cal, test = halves(101, seed=0, repeat=3)
    assert len(cal) == 50 and len(test) == 51
    assert sorted(np.concatenate([cal, test]).tolist()) == list(range(101))
    assert not np.array_equal(halves(101, 0, 4)[0], cal)


def test_roc_auc_matches_sklearn() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    member = rng.normal(0.3, 1, 300).round(1)  # rounding makes ties
    other = rng.normal(0, 1, 200).round(1)
    labels = np.r_[np.ones(300), np.zeros(200)]
    assert roc_auc(member, other) == pytest.approx(roc_auc_score(labels, np.r_[member, other]), abs=1e-12)
    low, high = auc_ci(member, other, np.arange(300), np.arange(200), n_boot=300)
    assert low < roc_auc(member, other) < high and high - low < 0.25


def test_membership_needs_a_vlmops_card() -> None:
    assert "does not record its training rows" in training_membership(None, pd.DataFrame())
    card = {"hyperparameters": {"vendors": ["x"]}, "data": {"train_version": "abc"}}
    assert "--data emoji" in training_membership(card, pd.DataFrame({"id": []}))


def test_rules_parse_and_check() -> None:
    rules = parse_rules("top1<0.5, ece>=0.08,slice_gap>1e-1", HEADLINE)
    assert [str(r) for r in rules] == ["top1<0.5", "ece>=0.08", "slice_gap>0.1"]
    results = check_rules(rules, {"top1": 0.4, "ece": 0.05, "slice_gap": None})
    assert [r.fired for r in results] == [True, False, True]
    assert "not measured" in results[2].reason
    assert parse_rules(None) == [] and parse_rules("  ") == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("top1<<0.5", "cannot parse"),
        ("top1 0.5", "cannot parse"),
        ("accuracy<0.5", "unknown metric 'accuracy'"),
    ],
)
def test_bad_rules(text: str, message: str) -> None:
    with pytest.raises(RuleError, match=message):
        parse_rules(text, HEADLINE)


class BatchDependent:
    """A model whose image embeddings depend on the other images in the batch (a broken harness)."""

    def __init__(self, inner) -> None:
        self.inner, self.info, self.logit_scale = inner, inner.info, 10.0

    def embed_images(self, images):
        emb = self.inner.embed_images(images)
        return l2_normalise(emb - 0.5 * emb.mean(axis=0, keepdims=True))


def test_batch_invariance_detects_batch_dependence(fake_model, tiny_images) -> None:
    model = fake_model(dim=16)
    images = [im.convert("RGB") for im in tiny_images] * 3
    classes = l2_normalise(np.random.default_rng(0).normal(size=(4, 16)))
    assert batch_invariance_section(model, images, classes)["invariant"]
    broken = batch_invariance_section(BatchDependent(model), images, classes)
    assert not broken["invariant"] and broken["max_abs_embedding_diff"] > 1e-3


def test_builtin_scores_do_not_depend_on_batch_size() -> None:
    from adapter_contract import sample_images
    from vlmops.models import load_model

    model = load_model("builtin:emoji-lit")
    images = [im.convert("RGB") for im in sample_images(64, seed=2)]
    classes = model.embed_texts(["an emoji of a cat", "an emoji of a dog", "an emoji of a car"])
    result = batch_invariance_section(model, images, classes)
    assert result["batch_sizes"] == [1, 64] and result["invariant"], result
    expected = sum(p.numel() for p in model.tower.parameters())
    expected += sum(p.numel() for p in model.text_tower.model.parameters())
    assert count_parameters(model) == expected


def test_headline_names_are_documented() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    missing = [name for name in HEADLINE if f"`{name}`" not in readme]
    assert not missing, f"document these --fail-on metrics in the README: {missing}"
