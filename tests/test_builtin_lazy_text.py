"""The built-in LiT model loads its text tower on first use: a process that only embeds images (a Ray
actor, the audit's image pass) never imports transformers nor reads MiniLM."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
from vlmops.models import load_model
model = load_model("builtin:emoji-lit")
print("after load:", "transformers" in sys.modules)
model.embed_images([__import__("PIL.Image").Image.new("RGB", (8, 8))])
print("after images:", "transformers" in sys.modules)
vectors = model.embed_texts(["a dog"])
print("after texts:", "transformers" in sys.modules, vectors.shape)
"""


def test_text_tower_is_loaded_on_first_text() -> None:
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True).stdout
    assert "after load: False" in out
    assert "after images: False" in out
    assert "after texts: True (1, 384)" in out
