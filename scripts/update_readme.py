"""Regenerate the README's config reference from the config dataclasses: python scripts/update_readme.py"""

import re
from pathlib import Path

from tuneloop.config import reference_markdown

README = Path(__file__).parents[1] / "README.md"
START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def render(text: str) -> str:
    return re.sub(f"{START}.*?{END}", lambda _: f"{START}\n{reference_markdown()}\n{END}", text, flags=re.S)


if __name__ == "__main__":
    README.write_text(render(README.read_text()))
