"""Well-formedness checker and a Chromium page shared by the HTML report tests."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path

VOID = {"meta", "br", "hr", "img", "input", "link", "col", "wbr", "area", "base", "source"}


class TagBalance(HTMLParser):
    """Every non-void start tag is closed in order (self-closing SVG tags are fine)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.seen: Counter[str] = Counter()

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.seen[tag] += 1
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        self.seen[tag] += 1

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
            return
        self.stack.pop()


@contextmanager
def chromium_page(path: Path, width: int = 1200, height: int = 900) -> Iterator:
    """A page of Debian's Chromium showing the file at `path`; fails if the page raised a script error."""
    from playwright.sync_api import sync_playwright

    from test_dashboard import _chromium

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": width, "height": height})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(path.as_uri())
        yield page
        browser.close()
    assert not errors, errors
