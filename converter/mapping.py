"""The mapping engine: apply a table of ordered rules to a source in one pass.

A table (see ``converter/tables``) is data: ordered :class:`Rule` records (``re.fullmatch``
over source names -> target key template + a named layout transform, or ``None`` = a
deliberate drop with a reason) and :class:`Fill` records (targets the source lacks, with a
reason). :func:`plan` turns a table, the source's tensor list and the target layout into a
:class:`Plan` in which every target key has exactly one source (or fill) and every source
tensor is consumed or dropped by an explicit rule; anything else is a :class:`MappingError`
with nearest-name hints. Shapes are checked against the layout before any data is read.
:func:`materialize` then reads, checks for NaN/Inf and transforms the tensors.

No substring matching, no positional slicing: names are matched whole, and index arithmetic
(TF ``block35_1`` -> torch ``repeat_1.0``) is a named template converter (``{n:minus1}``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from facenet_convert.converter.core.errors import MappingError
from facenet_convert.converter.sources.base import SourceReader, TensorInfo

#: How many names an error message lists before it says "and N more".
_LIST_LIMIT = 8


# --------------------------------------------------------------------------- table records
@dataclass(frozen=True)
class Rule:
    """One mapping decision: ``pattern`` (fullmatch over source names) -> ``target``.

    ``target`` is a template over the pattern's named groups (``{n}``, ``{n:minus1}``), or
    ``None`` for a deliberate drop explained by ``reason``. ``transform`` names an entry of
    :data:`TRANSFORMS`.
    """

    pattern: str
    target: str | None
    transform: str = "identity"
    reason: str = ""


@dataclass(frozen=True)
class Fill:
    """A target key the source does not hold, filled with a constant (``ones``/``zeros``)."""

    pattern: str
    value: str
    reason: str


@dataclass(frozen=True)
class Table:
    """A named, ordered set of rules and fills for one architecture and naming scheme."""

    name: str
    architecture: str
    scheme: str
    rules: tuple[Rule, ...]
    fills: tuple[Fill, ...] = ()
    #: Pattern naming an EMA shadow; group ``var`` is the variable it shadows.
    ema_pattern: str | None = None
    description: str = ""


# --------------------------------------------------------------------------- transforms
@dataclass(frozen=True)
class Transform:
    """A named layout change: ``apply`` on the array, ``source_shape`` from the target shape."""

    name: str
    source_shape: Callable[[tuple[int, ...]], tuple[int, ...]]
    apply: Callable[[np.ndarray], np.ndarray]
    doc: str


def _reverse(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(reversed(shape))


def _oihw_to_hwio(shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) != 4:
        return (-1,) * max(len(shape), 1)
    out_c, in_c, height, width = shape
    return (height, width, in_c, out_c)


TRANSFORMS: dict[str, Transform] = {t.name: t for t in (
    Transform("identity", lambda shape: tuple(shape), lambda a: a,
              "same layout: biases, BN statistics, PReLU alpha"),
    # TF conv kernel [H, W, in, out] -> torch [out, in, H, W]
    Transform("conv_hwio_to_oihw", _oihw_to_hwio, lambda a: a.transpose(3, 2, 0, 1),
              "TF conv kernel [H, W, in, out] -> torch [out, in, H, W] (transpose 3,2,0,1)"),
    # MTCNN's TF nets run on W/H-swapped images: kernel [W, H, in, out] -> [out, in, H, W]
    Transform("mtcnn_conv", _reverse, lambda a: a.transpose(3, 2, 1, 0),
              "MTCNN TF kernel [kw, kh, in, out] -> torch [out, in, kh, kw] (permute 3,2,1,0); "
              "MTCNN's TF nets work on W/H-swapped images"),
    # dense [in, out] -> torch Linear [out, in]
    Transform("dense_io_to_oi", _reverse, lambda a: a.transpose(1, 0),
              "TF dense kernel [in, out] -> torch Linear weight [out, in] (transpose)"),
)}

#: Template converters: name -> (forward on a matched group, inverse for hints).
CONVERTERS: dict[str, tuple[Callable[[str], str], Callable[[str], str]]] = {
    "minus1": (lambda s: str(int(s) - 1), lambda s: str(int(s) + 1)),
}

_FIELD = re.compile(r"\{(\w+)(?::(\w+))?\}")
_GROUP = re.compile(r"\(\?P<(\w+)>[^()]*\)")
_ALTERNATION = re.compile(r"\(\?:([^()|]*)(?:\|[^()]*)?\)")
_FILL_VALUES = ("ones", "zeros")


def render(template: str, groups: Mapping[str, str]) -> str:
    """Fill ``{name}`` / ``{name:converter}`` fields from a match's named groups."""

    def one(match: re.Match[str]) -> str:
        name, conv = match.group(1), match.group(2)
        if name not in groups or groups[name] is None:
            raise MappingError(f"template {template!r} uses group {name!r} that its pattern "
                               "does not define; fix the table")
        value = groups[name]
        if conv is None:
            return value
        if conv not in CONVERTERS:
            raise MappingError(f"template {template!r} names unknown converter {conv!r}; "
                               f"known: {sorted(CONVERTERS)}")
        return CONVERTERS[conv][0](value)

    return _FIELD.sub(one, template)


@dataclass(frozen=True)
class _CompiledRule:
    rule: Rule
    regex: re.Pattern[str]


@lru_cache(maxsize=4096)
def _target_regex(template: str) -> re.Pattern[str]:
    """Target keys a template can produce (compiled lazily: only hints need it)."""
    parts: list[str] = []
    pos = 0
    seen: set[str] = set()
    for match in _FIELD.finditer(template):
        parts.append(re.escape(template[pos:match.start()]))
        name = match.group(1)
        parts.append(f"(?P={name})" if name in seen else f"(?P<{name}>[^.]+)")
        seen.add(name)
        pos = match.end()
    parts.append(re.escape(template[pos:]))
    return re.compile("".join(parts))


_COMPILED: dict[int, tuple[Table, tuple[_CompiledRule, ...]]] = {}


def compile_table(table: Table) -> tuple[_CompiledRule, ...]:
    """Compile and validate a table once: regexes, transform names, drop reasons.

    Cached by identity (hashing a frozen table of hundreds of rules per lookup is slow);
    the cache keeps the table alive so an id is never reused while cached.
    """
    cached = _COMPILED.get(id(table))
    if cached is not None and cached[0] is table:
        return cached[1]
    result = _compile(table)
    if len(_COMPILED) > 64:
        _COMPILED.clear()
    _COMPILED[id(table)] = (table, result)
    return result


def _compile(table: Table) -> tuple[_CompiledRule, ...]:
    compiled = []
    for rule in table.rules:
        try:
            regex = re.compile(rule.pattern)
        except re.error as error:
            raise MappingError(f"table {table.name}: bad pattern {rule.pattern!r}: {error}") \
                from error
        if rule.target is None:
            if not rule.reason:
                raise MappingError(f"table {table.name}: drop rule {rule.pattern!r} has no "
                                   "reason; every drop must say why")
            compiled.append(_CompiledRule(rule, regex))
            continue
        if rule.transform not in TRANSFORMS:
            raise MappingError(f"table {table.name}: rule {rule.pattern!r} names unknown "
                               f"transform {rule.transform!r}; known: {sorted(TRANSFORMS)}")
        for match in _FIELD.finditer(rule.target):
            if match.group(1) not in regex.groupindex:
                raise MappingError(f"table {table.name}: template {rule.target!r} uses group "
                                   f"{match.group(1)!r} missing from {rule.pattern!r}")
            if match.group(2) is not None and match.group(2) not in CONVERTERS:
                raise MappingError(f"table {table.name}: template {rule.target!r} names "
                                   f"unknown converter {match.group(2)!r}")
        compiled.append(_CompiledRule(rule, regex))
    for fill in table.fills:
        if fill.value not in _FILL_VALUES:
            raise MappingError(f"table {table.name}: fill {fill.pattern!r} has value "
                               f"{fill.value!r}; known: {list(_FILL_VALUES)}")
        if not fill.reason:
            raise MappingError(f"table {table.name}: fill {fill.pattern!r} has no reason")
    return tuple(compiled)


def first_match(table: Table, name: str) -> tuple[Rule, dict[str, str]] | None:
    """The first rule of ``table`` (in order) whose pattern fullmatches ``name``."""
    for item in compile_table(table):
        match = item.regex.fullmatch(name)
        if match is not None:
            return item.rule, match.groupdict()
    return None


def expected_source_name(table: Table, target: str) -> str | None:
    """The source name a table expects for ``target`` (for hints), if one rule produces it."""
    for item in compile_table(table):
        if item.rule.target is None:
            continue
        match = _target_regex(item.rule.target).fullmatch(target)
        if match is None:
            continue
        values: dict[str, str] = {}
        try:
            for group, value in match.groupdict().items():
                conv = _conversion_of(item.rule.target or "", group)
                values[group] = CONVERTERS[conv][1](value) if conv else value
            name = _GROUP.sub(lambda m, v=values: v[m.group(1)], item.rule.pattern)
        except (KeyError, ValueError):
            continue
        # (?:a|b) -> a: a concrete name for the hint; it is re-checked against the rule.
        name = _ALTERNATION.sub(lambda m: m.group(1), name).replace("\\.", ".")
        if item.regex.fullmatch(name) and render(item.rule.target or "", match_groups(
                item.regex, name)) == target:
            return name
    return None


def match_groups(regex: re.Pattern[str], name: str) -> dict[str, str]:
    match = regex.fullmatch(name)
    return {} if match is None else match.groupdict()


def _conversion_of(template: str, group: str) -> str | None:
    for match in _FIELD.finditer(template):
        if match.group(1) == group and match.group(2):
            return match.group(2)
    return None


# --------------------------------------------------------------------------- layouts
@dataclass(frozen=True)
class TargetEntry:
    """One entry of a target state_dict: key, shape and numpy dtype name."""

    key: str
    shape: tuple[int, ...]
    dtype: str = "float32"


# --------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Assignment:
    """How one target key gets its value: a source tensor (+ transform) or a fill."""

    target: str
    shape: tuple[int, ...]
    dtype: str
    source: str | None
    transform: str | None
    rule: str
    fill: str | None = None
    reason: str = ""
    #: The variable name the rule matched when ``source`` is its EMA shadow.
    variable: str | None = None

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"target": self.target, "shape": list(self.shape),
                                 "dtype": self.dtype}
        if self.fill is not None:
            entry.update(fill=self.fill, rule=self.rule, reason=self.reason)
        else:
            entry.update(source=self.source, transform=self.transform, rule=self.rule)
            if self.variable is not None:
                entry["variable"] = self.variable
        return entry


@dataclass(frozen=True)
class Drop:
    """A source tensor deliberately not used, with the rule and reason."""

    source: str
    rule: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"source": self.source, "rule": self.rule, "reason": self.reason}


@dataclass
class Plan:
    """Every decision for one conversion, before any tensor data is read."""

    table: str
    weights: str
    assignments: list[Assignment]
    drops: list[Drop]
    #: Variables without an EMA shadow when ``weights='ema'`` (their raw value is used).
    ema_missing: list[str] = field(default_factory=list)

    @property
    def mapped(self) -> list[Assignment]:
        return [a for a in self.assignments if a.fill is None]

    @property
    def filled(self) -> list[Assignment]:
        return [a for a in self.assignments if a.fill is not None]

    def to_dict(self) -> dict[str, Any]:
        return {"table": self.table, "weights": self.weights,
                "mapped": len(self.mapped), "filled": len(self.filled),
                "dropped": len(self.drops), "ema_missing": list(self.ema_missing),
                "assignments": [a.to_dict() for a in self.assignments],
                "drops": [d.to_dict() for d in self.drops]}


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_LIST_LIMIT])
    more = len(items) - _LIST_LIMIT
    return shown + (f" and {more} more" if more > 0 else "")


def _hint(name: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f"{name} (nearest known: {close[0]})" if close else name


def plan(table: Table, tensors: Mapping[str, TensorInfo], layout: Sequence[TargetEntry], *,
         weights: str = "raw") -> Plan:
    """Match every source tensor to a rule and every target key to one source or fill."""
    if weights not in ("raw", "ema"):
        raise MappingError(f"weights must be 'raw' or 'ema', got {weights!r}")
    compile_table(table)
    targets = {entry.key: entry for entry in layout}
    names = list(tensors)

    # Which physical tensor stands for each variable name (EMA selection).
    physical: dict[str, str] = {name: name for name in names}
    drops: list[Drop] = []
    replaced: set[str] = set()
    shadows: dict[str, str] = {}
    if table.ema_pattern is not None:
        ema_re = re.compile(table.ema_pattern)
        for name in names:
            match = ema_re.fullmatch(name)
            if match is not None and match.group("var") in tensors:
                shadows[match.group("var")] = name
    if weights == "ema":
        if not shadows:
            raise MappingError("weights='ema' was asked but the source holds no "
                               "ExponentialMovingAverage shadows; use weights='raw'")
        for var, shadow in shadows.items():
            physical[var] = shadow
            replaced.add(shadow)
            drops.append(Drop(var, "weights=ema", f"raw value replaced by its EMA shadow "
                                                  f"{shadow}"))

    by_target: dict[str, Assignment] = {}
    unmatched: list[str] = []
    problems: list[str] = []
    ema_missing: list[str] = []
    for name in names:
        if name in replaced:
            continue  # consumed in place of its variable
        found = first_match(table, name)
        if found is None:
            unmatched.append(name)
            continue
        rule, groups = found
        if rule.target is None:
            drops.append(Drop(name, rule.pattern, rule.reason))
            continue
        key = render(rule.target, groups)
        if key not in targets:
            problems.append(f"{name} maps to {key} by rule {rule.pattern!r} but the target "
                            "layout has no such key (wrong model variant?)")
            continue
        if key in by_target:
            first = by_target[key].variable or by_target[key].source
            problems.append(f"target {key} is filled twice: by {first} and by {name}")
            continue
        entry = targets[key]
        src = physical[name]
        info = tensors[src]
        want = TRANSFORMS[rule.transform].source_shape(entry.shape)
        if tuple(info.shape) != tuple(want):
            problems.append(f"shape mismatch: source {src} has shape {list(info.shape)} but "
                            f"target {key} ({rule.transform}) expects {list(want)}")
            continue
        if info.dtype.kind != np.dtype(entry.dtype).kind:
            problems.append(f"dtype mismatch: source {src} is {info.dtype} but target "
                            f"{key} is {entry.dtype}")
            continue
        if weights == "ema" and src == name:
            ema_missing.append(name)
        by_target[key] = Assignment(key, entry.shape, entry.dtype, src, rule.transform,
                                    rule.pattern, variable=name if src != name else None)

    missing: list[str] = []
    assignments: list[Assignment] = []
    for entry in layout:
        if entry.key in by_target:
            assignments.append(by_target[entry.key])
            continue
        for fill in table.fills:
            if re.fullmatch(fill.pattern, entry.key):
                assignments.append(Assignment(entry.key, entry.shape, entry.dtype, None, None,
                                              fill.pattern, fill=fill.value,
                                              reason=fill.reason))
                break
        else:
            missing.append(entry.key)

    errors: list[str] = []
    if unmatched:
        known = [n for n in (expected_source_name(table, e.key) for e in layout) if n]
        hinted = [_hint(n, known) for n in unmatched]
        errors.append(f"{len(unmatched)} source tensor(s) match no rule of table "
                      f"{table.name}: {_listing(hinted)}")
    if missing:
        hinted = []
        for key in missing:
            expect = expected_source_name(table, key)
            near = difflib.get_close_matches(expect, names, n=1, cutoff=0.6) if expect else []
            text = f"{key} (expected source {expect}" if expect else f"{key} (no rule produces it"
            text += f"; nearest present: {near[0]})" if near else ")"
            hinted.append(text)
        errors.append(f"{len(missing)} target key(s) have no source: {_listing(hinted)}")
    if problems:
        errors.append(_listing(problems))
    if errors:
        raise MappingError("; ".join(errors) + "; check --model or the source file")
    return Plan(table.name, weights, assignments, drops, ema_missing)


# --------------------------------------------------------------------------- execution
@dataclass
class Materialized:
    """Converted arrays in target order, and the consumed sources holding NaN/Inf."""

    arrays: dict[str, np.ndarray]
    nonfinite: list[str]


def _all_finite(array: np.ndarray) -> bool:
    # Fast path: a sum is finite unless some element is NaN/Inf (or the sum overflows, in
    # which case the exact element-wise check decides).
    with np.errstate(all="ignore"):
        if np.isfinite(array.sum()):
            return True
    return bool(np.isfinite(array).all())


def _fill_value(assignment: Assignment) -> np.ndarray:
    dtype = np.dtype(assignment.dtype)
    if assignment.fill == "ones":
        return np.ones(assignment.shape, dtype=dtype)
    return np.zeros(assignment.shape, dtype=dtype)


def materialize(the_plan: Plan, reader: SourceReader, *, strict: bool = False,
                progress: Callable[[int, int, str], None] | None = None) -> Materialized:
    """Read, check and transform every planned tensor into a contiguous numpy array."""
    arrays: dict[str, np.ndarray] = {}
    nonfinite: list[str] = []
    total = len(the_plan.assignments)
    for index, assignment in enumerate(the_plan.assignments):
        if assignment.fill is not None:
            arrays[assignment.target] = _fill_value(assignment)
        else:
            source = assignment.source or ""
            array = reader.read(source)
            if array.dtype.kind in "fc" and not _all_finite(array):
                nonfinite.append(source)
            out = TRANSFORMS[assignment.transform or "identity"].apply(array)
            # Always an owned, writable, C-contiguous copy: never a view of the source's
            # memory map, which the reader may close.
            arrays[assignment.target] = np.array(out, dtype=np.dtype(assignment.dtype),
                                                 order="C", copy=True)
        if progress is not None:
            progress(index + 1, total, assignment.target)
    if nonfinite and strict:
        raise MappingError(f"{len(nonfinite)} source tensor(s) hold NaN or Inf: "
                           f"{_listing(nonfinite)}; strict mode refuses them")
    return Materialized(arrays, nonfinite)


def table_examples(table: Table, layout: Iterable[TargetEntry]) -> list[str]:
    """Every source name the table expects for ``layout`` (used by tests and hints)."""
    return [n for n in (expected_source_name(table, e.key) for e in layout) if n]
