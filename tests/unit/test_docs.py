"""The documents the code and the README point to are in the repository."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "etcd_backupd"
# a path ending in .md, not the tail of a longer token such as "-3.6.md"
MARKDOWN_PATH = re.compile(r"(?<![\w./-])[A-Za-z_][\w./-]*\.md\b")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _prose(source: str) -> list[str]:
    """The comments and docstrings of a module: where it cites documents."""
    comments = [
        token.string
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    ]
    documented = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    docstrings = [
        ast.get_docstring(node, clean=False) or ""
        for node in ast.walk(ast.parse(source))
        if isinstance(node, documented)
    ]
    return comments + docstrings


def _citations() -> dict[str, set[str]]:
    cited: dict[str, set[str]] = {}
    for module in sorted(PACKAGE.rglob("*.py")):
        for text in _prose(module.read_text(encoding="utf-8")):
            for path in MARKDOWN_PATH.findall(text):
                cited.setdefault(path, set()).add(str(module.relative_to(ROOT)))
    return cited


def test_every_document_the_code_cites_is_in_the_repository() -> None:
    missing = {
        path: sorted(modules)
        for path, modules in _citations().items()
        if not (ROOT / path).is_file()
    }
    assert not missing, f"cited as a path from the repository root, but not there: {missing}"


def test_relative_links_between_documents_resolve() -> None:
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for document in documents:
        for target in MARKDOWN_LINK.findall(document.read_text(encoding="utf-8")):
            if "://" in target or target.startswith(("#", "mailto:")):
                continue
            if not (document.parent / target.split("#")[0]).exists():
                broken.append(f"{document.relative_to(ROOT)} -> {target}")
    assert not broken, broken
