"""Request bodies: JSON with base64 images or multipart with image files, validated into one model."""

from __future__ import annotations

import json
from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from vlmops.serve.decode import decode_base64
from vlmops.serve.errors import ApiError

M = TypeVar("M", bound=BaseModel)
IMAGE_FIELDS = {
    "EmbeddingsRequest": "images",
    "ClassifyRequest": "image",
    "SearchRequest": "image",
    "TagRequest": "image",
}


def body_doc(model: type[BaseModel]) -> dict:
    """OpenAPI request body: the JSON schema, plus the same fields as multipart with image files."""
    image_field = IMAGE_FIELDS.get(model.__name__)
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
    if image_field:
        props = {k: v for k, v in schema["properties"].items() if k != image_field}
        binary = {"type": "string", "format": "binary"}
        props[image_field] = {"type": "array", "items": binary} if image_field == "images" else binary
        content["multipart/form-data"] = {"schema": {"type": "object", "properties": props}}
    return {"requestBody": {"required": True, "content": content}}


async def parse_body(request: Request, model: type[M]) -> tuple[M, list[bytes]]:
    """Validate a JSON or multipart body into `model`; returns it and the raw image bytes."""
    image_field = IMAGE_FIELDS.get(model.__name__)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data" and image_field:
        try:
            form = await request.form(max_files=64, max_fields=2000)
        except ApiError:
            raise
        except Exception as exc:
            raise ApiError(422, "bad_multipart", f"cannot parse the multipart body: {exc}") from None
        images = [await f.read() for f in form.getlist(image_field) if hasattr(f, "read")]
        fields: dict = {}
        for key in form:
            if key == image_field:
                continue
            values = [v for v in form.getlist(key) if isinstance(v, str)]
            annotation = str(model.model_fields[key].annotation) if key in model.model_fields else ""
            fields[key] = values if "list" in annotation else (values[0] if values else None)
        placeholder = [""] * len(images) if image_field == "images" else ("" if images else None)
        parsed = _validate(model, {**fields, image_field: placeholder})
        return parsed, images
    if content_type != "application/json":
        kinds = "application/json" + (" or multipart/form-data" if image_field else "")
        raise ApiError(
            415, "unsupported_media_type", f"Content-Type {content_type or 'missing'}: send {kinds}"
        )
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(422, "invalid_json", f"the body is not valid UTF-8 JSON ({exc})") from None
    except RecursionError:  # arrays/objects nested ~1,000 deep: no request of this API needs more than 3
        raise ApiError(
            422, "json_too_deep", "the JSON body is nested too deeply; send the fields /openapi.json lists"
        ) from None
    parsed = _validate(model, data)
    images: list[bytes] = []
    if image_field:
        value = getattr(parsed, image_field)
        values = value if isinstance(value, list) else ([] if value is None else [value])
        images = [
            decode_base64(v, f"{image_field}[{i}]" if image_field == "images" else image_field)
            for i, v in enumerate(values)
        ]
    return parsed, images


def _validate(model: type[M], data: object) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", describe(exc.errors())) from None


def describe(errors) -> str:
    """Pydantic errors as one line: `field: problem; ...`."""
    parts = []
    for err in errors[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def check_texts(texts: list[str], max_chars: int) -> None:
    """Every text non-blank and at most `max_chars` long."""
    for i, text in enumerate(texts):
        if not text.strip():
            raise ApiError(422, "empty_text", f"texts[{i}] is empty")
        if len(text) > max_chars:
            raise ApiError(
                413, "text_too_long", f"texts[{i}] has {len(text)} characters, the limit is {max_chars}"
            )
