"""What a server loads besides the model: label sets, a conformal calibration, a gallery, a vocabulary.

Each is a small file written by a CLI command and tied to the model version that produced it; the
server refuses to start with one made by another model version (its numbers would be meaningless).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vlmops.errors import DataError, VlmopsError
from vlmops.models.base import VLM

CALIBRATION_SCHEMA = "vlmops.calibration/1"
GALLERY_SCHEMA = "vlmops.gallery/1"


class ResourceError(VlmopsError):
    """A calibration, gallery or vocabulary file is missing, malformed or from another model."""


@dataclass(frozen=True)
class LabelSet:
    """Named candidate labels and the prompt template that turns each into a text."""

    name: str
    labels: tuple[str, ...]
    template: str

    def prompts(self) -> list[str]:
        """One prompt per label."""
        return [self.template.format(label) for label in self.labels]


@dataclass(frozen=True)
class Calibration:
    """Temperature and split-conformal (LAC) threshold fitted for one model and one label set."""

    model_version: str
    label_set: str
    labels: tuple[str, ...]
    template: str
    temperature: float
    alpha: float
    threshold: float  # LAC: a label is in the set when 1 - p(label) <= threshold
    n: int
    split: str | None

    def save(self, path: Path) -> None:
        """Write as JSON."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"schema": CALIBRATION_SCHEMA, **asdict(self)}, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Calibration:
        """Read a file written by `vlmops calibrate`."""
        data = _read_json(path, CALIBRATION_SCHEMA, "vlmops calibrate")
        data.pop("schema")
        return cls(**{**data, "labels": tuple(data["labels"])})

    def label_set_(self) -> LabelSet:
        """The label set it was fitted on."""
        return LabelSet(self.label_set, self.labels, self.template)


def fit_calibration(
    model: VLM,
    label_set: LabelSet,
    image_emb: np.ndarray,
    targets: np.ndarray,
    alpha: float,
    split: str | None,
) -> Calibration:
    """Fit temperature (NLL) and the LAC threshold on held-out images with known label indices."""
    from vlmops.evaluate.calibration import fit_temperature, softmax
    from vlmops.evaluate.conformal import ConformalClassifier

    if len(targets) < math.ceil(1 / alpha):
        raise DataError(
            f"{len(targets)} calibration images cannot give {1 - alpha:.0%} coverage; "
            f"use at least {math.ceil(1 / alpha)} (a bigger split or a larger alpha)"
        )
    class_emb = model.embed_texts(label_set.prompts())
    logits = model.logit_scale * image_emb @ class_emb.T
    temperature = fit_temperature(logits, targets)
    conformal = ConformalClassifier(alpha=alpha, method="lac").fit(softmax(logits, temperature), targets)
    return Calibration(
        model_version=model.info.version,
        label_set=label_set.name,
        labels=label_set.labels,
        template=label_set.template,
        temperature=float(temperature),
        alpha=float(alpha),
        threshold=float(conformal.threshold_),
        n=len(targets),
        split=split,
    )


@dataclass
class Gallery:
    """Embedded records to search: ids, labels, one text each, and a unit-row matrix."""

    model_version: str
    ids: list[str]
    labels: list[str | None]
    texts: list[str | None]
    embeddings: np.ndarray

    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Indices and cosine scores of the k best matches, best first."""
        scores = self.embeddings @ query.astype(np.float32)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(i), float(scores[i])) for i in top]

    def save(self, folder: Path) -> None:
        """Write embeddings.npy and index.json into `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "embeddings.npy", self.embeddings.astype(np.float32))
        meta = {
            "schema": GALLERY_SCHEMA,
            "model_version": self.model_version,
            "n": len(self.ids),
            "dim": int(self.embeddings.shape[1]),
            "ids": self.ids,
            "labels": self.labels,
            "texts": self.texts,
        }
        (folder / "index.json").write_text(json.dumps(meta) + "\n")

    @classmethod
    def load(cls, folder: Path) -> Gallery:
        """Read a folder written by `vlmops index build`."""
        meta = _read_json(folder / "index.json", GALLERY_SCHEMA, "vlmops index build")
        embeddings = np.load(folder / "embeddings.npy")
        if embeddings.shape != (meta["n"], meta["dim"]):
            raise ResourceError(
                f"{folder}: embeddings.npy has shape {embeddings.shape}, index.json says "
                f"({meta['n']}, {meta['dim']}); rebuild it with `vlmops index build`"
            )
        return cls(meta["model_version"], meta["ids"], meta["labels"], meta["texts"], embeddings)


def _read_json(path: Path, schema: str, command: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ResourceError(f"{path} does not exist; create it with `{command}`") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ResourceError(f"cannot read {path}: {exc}; recreate it with `{command}`") from None
    if not isinstance(data, dict) or data.get("schema") != schema:
        raise ResourceError(f"{path} is not a {schema} file; create it with `{command}`")
    return data


def check_version(kind: str, path: Path, made_by: str, model_version: str) -> None:
    """Refuse a resource made by another model version."""
    if made_by != model_version:
        raise ResourceError(
            f"the {kind} {path} was made with model version {made_by}, but the server runs {model_version}; "
            f"rebuild it with this model"
        )


def read_lines(path: Path, what: str) -> tuple[str, ...]:
    """Non-empty, stripped, de-duplicated lines of a text file (label set or vocabulary)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ResourceError(f"cannot read the {what} file {path}: {exc}") from None
    entries = tuple(dict.fromkeys(line.strip() for line in lines if line.strip()))
    if not entries:
        raise ResourceError(f"the {what} file {path} is empty; put one entry per line")
    return entries
