"""README's "How the code is laid out" and the package docstrings say the same thing, word for word."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import dpgdiff
import tune

README = Path(__file__).resolve().parent.parent / "README.md"


def _words(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


@pytest.mark.parametrize("package, name", [(dpgdiff, "dpgdiff"), (tune, "tune")])
def test_layout_section_matches_package_docstring(package, name):
    text = README.read_text()
    block = text.split(f"<!-- {name} layout: begin -->")[1].split(f"<!-- {name} layout: end -->")[0]
    assert _words(block) in _words(package.__doc__)
    for path in re.findall(r"`((?:dpgdiff|tune)/[\w/]*\.py|(?:dpgdiff|tune)/\w+/)`", block):
        assert (README.parent / path).exists(), f"README names {path}, which does not exist"
