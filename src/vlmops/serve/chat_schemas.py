"""The body of POST /v1/chat/completions: the OpenAI fields the gateway supports, nothing silently dropped.

A field the gateway does not support (tools, response_format, penalties ...) is refused with a message
that names it and lists the supported ones, instead of being ignored: a client that relies on it must
not get an answer that quietly disregards it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vlmops.serve.schemas import Text

MAX_CHOICES = 16
MAX_STOP = 4


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageURL(_Strict):
    """An image as a ``data:image/...;base64,`` URL (http(s) URLs only where the operator allows them)."""

    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(_Strict):
    type: Literal["text"]
    text: Text


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(_Strict):
    """One message: text, or a list of text and image parts."""

    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[Part] | None = None
    name: Text | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatRequest(_Strict):
    """An OpenAI chat.completions request (the subset every backend of this gateway supports)."""

    model: Text = Field(min_length=1, max_length=256)
    messages: list[Message] = Field(min_length=1, max_length=64)
    max_tokens: int | None = Field(None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stop: Text | list[Text] | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Text | None = Field(None, max_length=256)

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(cls.model_fields))
            if unknown:
                raise ValueError(
                    f"unsupported field(s) {', '.join(unknown)}: this gateway supports "
                    f"{', '.join(cls.model_fields)}; remove the others"
                )
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ChatRequest:
        stops = self.stop_list()
        if len(stops) > MAX_STOP or any(not s for s in stops):
            raise ValueError(f"stop: give at most {MAX_STOP} non-empty strings")
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream: true")
        both = self.max_tokens is not None and self.max_completion_tokens is not None
        if both and self.max_tokens != self.max_completion_tokens:
            raise ValueError("max_tokens and max_completion_tokens differ; give one of them")
        return self

    def stop_list(self) -> list[str]:
        """The stop sequences as a list."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def token_limit(self) -> int | None:
        """max_completion_tokens, or the older max_tokens."""
        return self.max_completion_tokens or self.max_tokens

    def params(self) -> dict:
        """The generation parameters, as the log records them."""
        return self.model_dump(
            include={
                "max_tokens",
                "max_completion_tokens",
                "temperature",
                "top_p",
                "seed",
                "n",
                "stop",
                "logprobs",
                "top_logprobs",
                "stream_options",
                "user",
            },
            exclude_none=True,
        )
