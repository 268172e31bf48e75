"""Chat messages taken apart: the image parts (as bytes), the text the log keeps, the prompt a local model
answers.

Images arrive as ``data:`` URLs. An ``http(s)`` URL is refused here unless the route was given a fetcher
(an operator allow-list); the route then fetches it and puts the bytes back into the body as a data URL,
so every backend sees data URLs only.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from vlmops.serve.chat_schemas import ChatRequest, ImagePart, TextPart
from vlmops.serve.decode import decode_base64
from vlmops.serve.errors import ApiError

SINGLE_TURN_ROLES = ("system", "developer")


@dataclass
class ImageRef:
    """One image part: where it sits in the body (for error messages) and its URL."""

    field: str
    message: int
    part: int
    url: str

    @property
    def is_data(self) -> bool:
        return self.url[:5].lower() == "data:"

    @property
    def is_http(self) -> bool:
        return self.url.split(":", 1)[0].lower() in ("http", "https")


def image_refs(request: ChatRequest) -> list[ImageRef]:
    """Every image_url part, in order."""
    refs = []
    for m, message in enumerate(request.messages):
        if isinstance(message.content, list):
            for p, part in enumerate(message.content):
                if isinstance(part, ImagePart):
                    field = f"messages[{m}].content[{p}].image_url.url"
                    refs.append(ImageRef(field, m, p, part.image_url.url))
    return refs


def data_url_bytes(ref: ImageRef) -> bytes:
    """The bytes of a ``data:[<type>];base64,`` image URL; a clear 422 for anything else."""
    if ref.is_http:
        raise ApiError(
            422,
            "image_url_not_allowed",
            f"{ref.field} is an {ref.url.split(':', 1)[0]} URL and this server does not fetch images: "
            "send the image as a data: URL (data:image/png;base64,...)",
        )
    if not ref.is_data:
        raise ApiError(
            422,
            "bad_image_url",
            f"{ref.field} is neither a data: URL nor http(s): send data:image/png;base64,<base64 bytes>",
        )
    header, comma, payload = ref.url.partition(",")
    if not comma or not header.lower().endswith(";base64"):
        raise ApiError(
            422,
            "bad_image_url",
            f"{ref.field} is a data: URL without ';base64,': send data:image/png;base64,<base64 bytes>",
        )
    return decode_base64(payload, ref.field)


def as_data_url(data: bytes, media_type: str = "image/png") -> str:
    """Bytes as a base64 data URL."""
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def transcript(request: ChatRequest) -> list[dict]:
    """The text of every message, as the log keeps it: [{"role", "text"}] (image parts left out)."""
    out = []
    for message in request.messages:
        out.append({"role": message.role, "text": message_text(message.content)})
    return out


def message_text(content) -> str:
    """The text parts of a message's content, joined by newlines."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(part.text for part in content if isinstance(part, TextPart))


def single_turn_prompt(request: ChatRequest) -> str:
    """The prompt of a one-question exchange: system/developer text, then the one user message's text.

    A local generative model answers one prompt about one image (`GenerativeVLM.generate`), so earlier
    assistant turns or several user messages cannot be given to it; they are refused, not dropped.
    """
    users = [m for m in request.messages if m.role == "user"]
    if len(users) != 1 or any(m.role == "assistant" for m in request.messages):
        raise ApiError(
            422,
            "multi_turn_unsupported",
            f"the local model answers one question about one image: send one user message "
            f"(optionally after system messages); got {len(users)} user and "
            f"{sum(m.role == 'assistant' for m in request.messages)} assistant messages",
        )
    texts = [message_text(m.content) for m in request.messages if m.role in SINGLE_TURN_ROLES]
    texts.append(message_text(users[0].content))
    prompt = "\n".join(t for t in texts if t.strip())
    if not prompt.strip():
        raise ApiError(422, "empty_prompt", "the user message has no text: add a text part with the question")
    return prompt
