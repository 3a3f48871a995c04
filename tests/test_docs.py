"""The docs match the code: docs/cli.md is what the commands say, every relative link resolves,
every documented ``facenet_convert`` name imports, and the README stays a short guide."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "DEVELOPING.md", ROOT / "CHANGELOG.md",
         *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_cli_reference_is_generated_from_the_commands() -> None:
    """In a fresh process: click caches each command's help option on first use, so the
    text rendered inside a test session depends on what ran before."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_cli_docs.py"),
                           "--check"], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    from facenet_convert.converter.cli import main

    for name in main.commands:                      # every command has its section
        assert f"\n## {name}\n" in text


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a markdown page."""
    found = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
            found.add(slug)
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in _LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):            # http(s), mailto: not ours to check
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        missing_anchor = bool(anchor) and resolved.suffix == ".md" and (
            not resolved.exists() or anchor not in _anchors(resolved))
        if not resolved.exists() or missing_anchor:
            broken.append(target)
    assert broken == [], f"{page.name}: broken links {broken}"


def test_every_documented_name_imports() -> None:
    names: set[str] = set()
    for page in PAGES:
        names |= set(re.findall(r"facenet_convert(?:\.[A-Za-z_][A-Za-z0-9_]*)+",
                                page.read_text(encoding="utf-8")))
    assert names
    broken = []
    for name in sorted(names):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                value = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            try:
                for attr in parts[cut:]:
                    value = getattr(value, attr)
            except AttributeError:
                broken.append(name)
            break
    assert broken == []


def test_readme_is_a_short_guide_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 220
    assert "pip install facenet-convert" in text
    assert "./scripts/demo.sh" in text and "./scripts/test.sh" in text


def test_packaging_conventions() -> None:
    assert "MIT License" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert (ROOT / "py.typed").is_file()
    from facenet_convert import __version__

    assert f"## {__version__}" in (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
