"""LFW's ``pairs.txt`` and image layout, read as upstream ``lfw.py`` reads them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from facenet_convert.converter.core.errors import EvaluationError

PAIRS_HEADER_FIELDS = 2  # LFW pairs.txt starts with "<sets> <pairs per set>"


@dataclass(frozen=True)
class Pair:
    """One line of a pairs file: two (name, number) images and whether they are one person."""

    line: int
    first: tuple[str, int]
    second: tuple[str, int]
    issame: bool


def read_pairs(path: str | os.PathLike[str]) -> list[Pair]:
    """Pairs of an LFW ``pairs.txt``: ``name n1 n2`` (same) or ``name1 n1 name2 n2`` (different).

    A first line of two fields is LFW's ``<sets> <pairs per set>`` header and is skipped
    (upstream ``lfw.read_pairs`` always drops line 1; a 2-field line is never a pair).
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise EvaluationError(f"cannot read the pairs file ({error})", path=file) from error
    pairs: list[Pair] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or (number == 1 and len(fields) == PAIRS_HEADER_FIELDS):
            continue
        try:
            if len(fields) == 3:
                pair = Pair(number, (fields[0], int(fields[1])), (fields[0], int(fields[2])),
                            True)
            elif len(fields) == 4:
                pair = Pair(number, (fields[0], int(fields[1])), (fields[2], int(fields[3])),
                            False)
            else:
                raise ValueError
            if any(n in (".", "..") or "/" in n or "\\" in n
                   for n in (pair.first[0], pair.second[0])):
                raise ValueError
        except ValueError:
            raise EvaluationError(f"line {number}: expected 'name n1 n2' or 'name1 n1 name2 n2' "
                                  "(LFW pairs.txt; names are folder names, numbers integers), "
                                  f"found {line.strip()[:80]!r}",
                                  path=file) from None
        pairs.append(pair)
    if not pairs:
        raise EvaluationError("the pairs file holds no pairs", path=file)
    return pairs


def lfw_path(images_dir: str | os.PathLike[str], name: str, number: int,
             ext: str | None = None) -> Path | None:
    """``DIR/name/name_NNNN.ext`` (LFW's layout); without ``ext`` .jpg, then .png (upstream)."""
    stem = Path(images_dir) / name / f"{name}_{number:04d}"
    for suffix in ([ext] if ext else ["jpg", "png"]):
        candidate = stem.with_name(f"{stem.name}.{suffix.lstrip('.')}")
        if candidate.is_file():
            return candidate
    return None


@dataclass
class PairPaths:
    """The pairs whose two images exist: paths (2 per pair, in order), labels, and the rest."""

    paths: list[Path] = field(default_factory=list)
    issame: list[bool] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    missing: list[tuple[int, str]] = field(default_factory=list)


def pair_paths(images_dir: str | os.PathLike[str], pairs: Sequence[Pair],
               ext: str | None = None) -> PairPaths:
    """Resolve pairs to files; pairs with a missing image are skipped (``lfw.get_paths``)."""
    root = Path(images_dir)
    if not root.is_dir():
        raise EvaluationError("IMAGES_DIR is not a folder; expected LFW's name/name_NNNN.jpg "
                              "layout", path=root)
    out = PairPaths()
    for pair in pairs:
        first = lfw_path(root, *pair.first, ext)
        second = lfw_path(root, *pair.second, ext)
        if first is None or second is None:
            name, number = pair.first if first is None else pair.second
            out.missing.append((pair.line, f"{name}/{name}_{number:04d}.{ext or 'jpg|png'}"))
            continue
        out.paths += [first, second]
        out.issame.append(pair.issame)
        out.lines.append(pair.line)
    if not out.issame:
        raise EvaluationError(f"none of the {len(pairs)} pairs has both images in IMAGES_DIR "
                              f"(first missing: {out.missing[0][1]}); check --ext and the "
                              "name/name_NNNN.ext layout", path=root)
    return out
