"""The architecture registry: every record of ``converter/architectures/``, looked up by name.

``inspect``, ``convert --model``, ``parity``, ``regenerate``, ``embed`` and ``export`` all read
it, so an architecture is described in exactly one place (its record). Record modules are
found by walking the ``architectures`` package: adding one needs no edit here.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from functools import lru_cache

from facenet_convert.converter import architectures as _records_package
from facenet_convert.converter.architecture import TASKS, Architecture
from facenet_convert.converter.core.errors import MappingError
from facenet_convert.converter.mapping import Table


@lru_cache(maxsize=1)
def _registry() -> dict[str, Architecture]:
    found: dict[str, Architecture] = {}
    for info in sorted(pkgutil.iter_modules(_records_package.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{_records_package.__name__}.{info.name}")
        for record in getattr(module, "RECORDS", ()):
            if record.name in found:
                raise MappingError(f"architecture {record.name!r} is registered twice "
                                   f"(again in {module.__name__}); rename one record")
            if record.task not in TASKS:
                raise MappingError(f"architecture {record.name!r} has task {record.task!r}; "
                                   f"expected one of {list(TASKS)}")
            found[record.name] = record
    return found


def architectures(task: str | None = None) -> tuple[Architecture, ...]:
    """Every record (of one task), embedding models first, then in the order their modules
    (sorted by name) define them: MTCNN's nets come as pnet, rnet, onet."""
    records = sorted(_registry().values(), key=lambda r: TASKS.index(r.task))
    return tuple(r for r in records if task is None or r.task == task)


def names(task: str | None = None) -> tuple[str, ...]:
    """The ``--model`` names (of one task)."""
    return tuple(record.name for record in architectures(task))


def get_architecture(name: str) -> Architecture:
    """The record called ``name``; a clear error lists the known ones."""
    registry = _registry()
    if name not in registry:
        raise MappingError(f"unknown model {name!r}; known: {', '.join(names())}")
    return registry[name]


def all_tables() -> dict[str, Table]:
    """Every mapping table of every record, by table name."""
    tables: dict[str, Table] = {}
    for record in architectures():
        for table in record.tables.values():
            if table.name in tables:
                raise MappingError(f"mapping table {table.name!r} belongs to two records")
            tables[table.name] = table
    return tables


def get_table(name: str) -> Table:
    """The table called ``name``; a clear error lists the known ones."""
    tables = all_tables()
    if name not in tables:
        raise MappingError(f"unknown mapping table {name!r}; known: {sorted(tables)}")
    return tables[name]


def head_sizes(record: Architecture, shapes: Mapping[str, tuple[int, ...]]
               ) -> tuple[int | None, int | None]:
    """(embedding size, class count) of a state dict's shapes, by the record's head keys."""
    sizes = []
    for key in (record.embedding_key, record.classes_key):
        shape = None if key is None else shapes.get(key)
        sizes.append(int(shape[0]) if shape is not None and len(shape) == 2 else None)
    return sizes[0], sizes[1]


def match_state(shapes: Mapping[str, tuple[int, ...]]) -> Architecture | None:
    """The record whose layout has exactly these keys and shapes (a converted state dict).

    Checks every shape against the architecture before anything is built or allocated, so an
    untrusted weights file cannot make a model of absurd size.
    """
    keys = set(shapes)
    for record in architectures():
        embedding, classes = head_sizes(record, shapes)
        if record.task == "embedding" and embedding is None:
            continue
        layout = record.layout(embedding, classes)
        if keys == {entry.key for entry in layout} and all(
                tuple(shapes[entry.key]) == entry.shape for entry in layout):
            return record
    return None


def mismatch(record: Architecture, shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """Why ``shapes`` is not a state dict of ``record`` (first differences), or None if it is."""
    embedding, classes = head_sizes(record, shapes)
    layout = {e.key: e.shape for e in record.layout(embedding, classes)}
    problems = [f"missing {key}" for key in layout if key not in shapes]
    problems += [f"unexpected {key}" for key in shapes if key not in layout]
    problems += [f"{key}: expected shape {list(shape)}, found {list(shapes[key])}"
                 for key, shape in layout.items()
                 if key in shapes and tuple(shapes[key]) != shape]
    if not problems:
        return None
    more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
    return "; ".join(problems[:3]) + more
