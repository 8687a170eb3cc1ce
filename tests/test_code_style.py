"""One typing and docstring dialect across src/: PEP 604 types, transformers' markdown docstrings, small modules."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
FILES = sorted(SRC.rglob("*.py"))
# The model file holds the paper's whole computation in one place: the one module allowed to be longer.
LONG_FILE_EXCEPTIONS = {"modeling_catseg.py"}
MAX_LINES = 600
# numpy-style sections ("Parameters\n----------"); reST section headers in prose docstrings are not these.
NUMPY_SECTIONS = (
    "Parameters", "Other Parameters", "Returns", "Yields", "Raises", "Warns", "Attributes", "Methods", "Examples",
    "Notes", "See Also", "References",
)
NUMPY_UNDERLINE = re.compile(rf"^\s*(?:{'|'.join(NUMPY_SECTIONS)})\s*\n\s*-{{3,}}\s*$", re.MULTILINE)
OLD_TYPING = re.compile(r"\b(?:Optional|Union)\[|\btyping\.(?:List|Dict|Tuple|Set|Optional|Union)\b|"
                        r"^from typing import [^\n]*\b(?:List|Dict|Tuple|Set|Optional|Union)\b", re.MULTILINE)


def _rel(path: Path) -> str:
    return str(path.relative_to(SRC))


def test_there_are_files_to_check() -> None:
    assert any(path.name == "image_processing_catseg.py" for path in FILES)


@pytest.mark.parametrize("path", FILES, ids=_rel)
def test_pep604_typing(path: Path) -> None:
    found = [match.group(0) for match in OLD_TYPING.finditer(path.read_text())]
    assert not found, f"{_rel(path)}: use `X | None`, `A | B` and builtin generics (`list[int]`), found {found}"


@pytest.mark.parametrize("path", FILES, ids=_rel)
def test_transformers_docstring_dialect(path: Path) -> None:
    text = path.read_text()
    assert ":param " not in text, f"{_rel(path)}: reST `:param x:` found; write an `Args:` section instead"
    match = NUMPY_UNDERLINE.search(text)
    assert match is None, f"{_rel(path)}: numpy-style section {match.group(0).split()[0]!r}; write `Args:` / `Returns:`"


@pytest.mark.parametrize("path", FILES, ids=_rel)
def test_module_size(path: Path) -> None:
    if path.name in LONG_FILE_EXCEPTIONS:
        return
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{_rel(path)} has {lines} lines (at most {MAX_LINES}): split it by concept"


@pytest.mark.parametrize("path", FILES, ids=_rel)
def test_module_docstring_says_what_it_owns(path: Path) -> None:
    docstring = ast.get_docstring(ast.parse(path.read_text()), clean=False)
    assert docstring and docstring.strip(), f"{_rel(path)} has no module docstring"
    first = docstring.strip().splitlines()[0]
    assert len(first.split()) >= 3, f"{_rel(path)}: the docstring's first line should say what the module owns"
