"""Request and response bodies of the /v1 API (pydantic; they are the OpenAPI schema too).

Images travel as base64 strings in JSON bodies (a ``data:`` URL prefix is fine) or as files in
multipart/form-data bodies; either way the gateway sniffs the real format from the bytes.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

Base64Image = str


def _scalar_values(text: str) -> str:
    """Refuse text that is not a sequence of Unicode scalar values (JSON allows lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"character {exc.start} is a lone surrogate (U+{ord(text[exc.start]):04X}), not Unicode text; "
            "send a valid UTF-8 string (a surrogate pair must encode one character)"
        ) from None
    return text


Text = Annotated[str, AfterValidator(_scalar_values)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbeddingsRequest(_Request):
    """Images and/or texts to embed."""

    images: list[Base64Image] = Field(default_factory=list, description="base64-encoded image files")
    texts: list[Text] = Field(default_factory=list, description="texts to embed")


class ClassifyRequest(_Request):
    """One image and the candidate labels (given, or a label set the server knows)."""

    image: Base64Image = Field(description="base64-encoded image file")
    labels: list[Text] | None = Field(None, description="candidate labels; or use label_set")
    label_set: Text | None = Field(None, description="name of a label set the server loaded (see /v1/models)")
    top_k: int = Field(5, ge=1, le=100)
    template: Text | None = Field(None, description="prompt template with one '{}', e.g. 'a photo of {}.'")


class SearchRequest(_Request):
    """A text or an image query over the server's gallery."""

    text: Text | None = None
    image: Base64Image | None = None
    top_k: int = Field(10, ge=1, le=1000)


class TagRequest(_Request):
    """An image to describe with keywords from the server's vocabulary."""

    image: Base64Image
    top_k: int = Field(5, ge=1, le=50)


class FeedbackRequest(_Request):
    """A user's verdict on an earlier answer: a classification's label, or a chat completion's answer.

    Classify: `accepted`, and the correct `label` when not accepted. Chat completion: a `rating` and/or
    a corrected `answer`; `accepted` defaults to "no corrected answer given" and cannot be true with one.
    """

    request_id: Text = Field(min_length=1, max_length=64)
    accepted: bool | None = Field(
        None,
        description="true: the prediction was right; false: give the correct label (required for classify; "
        "for a chat completion it defaults to true without an 'answer' and false with one)",
    )
    label: Text | None = Field(None, max_length=500, description="the correct label when not accepted")
    answer: Text | None = Field(
        None, max_length=8000, description="chat completions: the corrected answer (retraining learns it)"
    )
    rating: float | None = Field(
        None,
        ge=0,
        le=5,
        allow_inf_nan=False,
        description="a score a person gave the answer, 0 to 5 (e.g. 1-5 stars, or 0/1 for thumbs down/up)",
    )
    source: Literal["human", "model"] = Field(
        "human", description="who decided: a person, or a model (never used as ground truth for retraining)"
    )


class _Response(BaseModel):
    request_id: str
    model_version: str


class Embedding(BaseModel):
    index: int
    kind: Literal["image", "text"]
    embedding: list[float]


class EmbeddingsResponse(_Response):
    dim: int
    data: list[Embedding]


class LabelScore(BaseModel):
    label: str
    probability: float


class ClassifyResponse(_Response):
    label: str
    confidence: float
    top_k: list[LabelScore]
    prediction_set: list[str] | None = Field(
        None, description="conformal set with the calibrated coverage; null without a calibration"
    )
    abstain: bool = Field(description="true when confidence is under the server's abstain threshold")
    calibrated: bool


class SearchHit(BaseModel):
    id: str
    score: float
    label: str | None = None
    text: str | None = None


class SearchResponse(_Response):
    hits: list[SearchHit]


class Tag(BaseModel):
    tag: str
    score: float


class TagResponse(_Response):
    tags: list[Tag]
    alt_text: str


class FeedbackResponse(BaseModel):
    request_id: str
    feedback_id: int


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody
    request_id: str | None = None


class ModelsResponse(BaseModel):
    object: str = "list"
    data: list[dict] = Field(default_factory=list, description="the served model, as OpenAI clients list it")
    model: dict
    runtime: str
    label_sets: dict[str, int]
    calibration: dict | None
    gallery: dict | None
    vocabulary: int
