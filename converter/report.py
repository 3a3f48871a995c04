"""Render a parity report as JSON and as a readable markdown table; write them atomically.

The markdown goes to ``--markdown FILE`` and, when ``$GITHUB_STEP_SUMMARY`` is set (GitHub
Actions), is appended to that file so the figures show on the workflow run's page.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from facenet_convert.converter.core.atomic import atomic_output
from facenet_convert.converter.core.checks import dumps as json_dumps
from facenet_convert.converter.core.errors import OutputError
from facenet_convert.converter.parity import Figures, ParityReport


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    return f"{value:.{digits}g}" if 1e-3 <= abs(value) < 1e4 else f"{value:.{digits - 1}e}"


def to_json(report: ParityReport) -> str:
    """The report as pretty JSON (keys in a fixed order), ending with a newline."""
    return json_dumps(report.to_dict(), indent=2) + "\n"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _output_rows(outputs: Iterable[Figures]) -> list[str]:
    rows = [("| output | shape | **float64 max abs / scale** | float64 max abs | "
             "L2 (TF32−PT32) | max abs (TF32−PT32) | min cosine | expected float32 noise | "
             "noise ratio |"),
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for fig in outputs:
        shape = "×".join(str(d) for d in fig.shape)
        rows.append(f"| {_escape(fig.name)} | {shape} | **{_num(fig.rel_max_abs64)}** | "
                    f"{_num(fig.max_abs64)} | {_num(fig.l2)} | {_num(fig.max_abs)} | "
                    f"{_num(fig.min_cosine, 9)} | {_num(fig.expected_noise_l2)} | "
                    f"{_num(fig.noise_ratio)} |")
    return rows


def to_markdown(report: ParityReport, *, title: str | None = None) -> str:
    """A readable summary: verdict, inputs, output figures, gates, per-layer table."""
    verdict = "PASS" if report.passed else "FAIL"
    lines = [f"### {title or 'Parity'}: {report.model} — **{verdict}**", ""]
    lines.append(f"- TF side: {_escape(report.source_description)}")
    lines.append(f"- PyTorch side: `{_escape(report.weights)}`")
    inputs = report.inputs
    if inputs.get("kind") == "images":
        lines.append(f"- inputs: {inputs['count']} images from `{_escape(inputs['folder'])}`, "
                     f"batch size {inputs['batch_size']}, NCHW {inputs['shape_nchw']}")
    else:
        lines.append(f"- inputs: {inputs['batches']} seeded N(0,1) batches of "
                     f"{inputs['batch_size']} (seed {inputs['seed']}), NCHW "
                     f"{inputs['shape_nchw']} (NHWC on the TF side)")
    lines.append(f"- verdict: float64 on both sides, the first {inputs.get('float64_count')} "
                 rf"inputs; gate max \|TF64 − PT64\| / max \|TF64\| ≤ {_num(report.tolerance)} "
                 "(a correct conversion: about 1e-14). Float32 figures are for information "
                 "(noise ratio: the float32 difference over both sides' expected float32 "
                 "noise, about 1 when correct).")
    lines.append("")
    lines += _output_rows(report.outputs)
    lines += ["", "| gate | value | limit | result |", "|---|---:|---:|---|"]
    for gate in report.gates:
        lines.append(f"| {_escape(gate.name)} | {_num(gate.value)} | {_num(gate.limit)} | "
                     f"{'pass' if gate.passed else '**FAIL**'} |")
    if report.divergence is not None:
        div = report.divergence
        lines += ["", (f"**First divergent layer: {_escape(div.label)}** "
                       f"(`{_escape(div.tf_tensor)}`): {_escape(div.reason)}; "
                       f"float64 max abs {_num(div.max_abs64)}.")]
    if report.layers is not None:
        lines += ["", "<details><summary>Per-layer differences (network order)</summary>", "",
                  ("| # | layer (ours) | float64 max abs / scale | float64 max abs | "
                   "float32 max abs | float32 noise ratio |"),
                  "|---:|---|---:|---:|---:|---:|"]
        marked = report.divergence.tf_tensor if report.divergence is not None else None
        for index, fig in enumerate(report.layers, 1):
            if fig.missing:
                lines.append(f"| {index} | {_escape(fig.name)} | not in graph | | | |")
                continue
            name = _escape(fig.name)
            if fig.tf_tensor == marked:
                name = f"**{name}** ←"
            lines.append(f"| {index} | {name} | {_num(fig.rel_max_abs64)} | "
                         f"{_num(fig.max_abs64)} | {_num(fig.max_abs)} | "
                         f"{_num(fig.noise_ratio)} |")
        lines += ["", "</details>"]
    if report.notes:
        lines += [""] + [f"- note: {_escape(note)}" for note in report.notes]
    lines += ["", f"<sub>{report.seconds:.1f} s · "
              + ", ".join(f"{k} {v}" for k, v in report.versions.items()) + "</sub>", ""]
    return "\n".join(lines)


def summary_line(report: ParityReport) -> str:
    """One line for the terminal: verdict (float64) and the headline figures."""
    head = report.outputs[0] if report.outputs else None
    parts = [f"parity {'PASS' if report.passed else 'FAIL'} ({report.model})"]
    if head is not None and not report.inputs.get("float64_count"):
        # an ONNX model runs in float32 only: its gate is float32 max abs / scale
        parts.append(f"{head.name}: float32 max abs / scale {_num(head.rel_max_abs)} "
                     f"(gate {_num(report.tolerance)}, no float64 run); float32 L2 "
                     f"{_num(head.l2)}, max abs {_num(head.max_abs)}")
    elif head is not None:
        parts.append(f"{head.name}: float64 max abs / scale {_num(head.rel_max_abs64)} "
                     f"(gate {_num(report.tolerance)}, {report.inputs.get('float64_count')} "
                     f"inputs); float32 L2 {_num(head.l2)}, max abs {_num(head.max_abs)}, "
                     f"noise ratio {_num(head.noise_ratio)}")
        if head.min_cosine is not None:
            parts.append(f"min cosine {_num(head.min_cosine, 9)}")
    failed = report.failed_gates
    if failed:
        parts.append("failed: " + ", ".join(f"{g.name} {_num(g.value)} > {_num(g.limit)}"
                                            for g in failed))
    if report.divergence is not None:
        parts.append(f"first divergent layer: {report.divergence.label}")
    return "; ".join(parts)


def write_text(path: str | os.PathLike[str], text: str, *,
               inputs: Iterable[str | os.PathLike[str]] = ()) -> Path:
    """Write ``text`` atomically, replacing an earlier report (never a symlink or an input)."""
    target = Path(path)
    with atomic_output(target, force=True, inputs=inputs, final=True) as handle:
        handle.write(text.encode("utf-8"))
    return target


def append_step_summary(markdown: str, environ: dict[str, str] | None = None) -> Path | None:
    """Append to ``$GITHUB_STEP_SUMMARY`` when it is set; return the file appended to."""
    env = os.environ if environ is None else environ
    target = env.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    path = Path(target)
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(markdown if markdown.endswith("\n") else markdown + "\n")
    except OSError as error:
        raise OutputError(f"cannot append to $GITHUB_STEP_SUMMARY: "
                          f"{error.strerror or error}", path=path) from error
    return path


def write_reports(report: ParityReport, *, json_path: str | os.PathLike[str] | None = None,
                  markdown_path: str | os.PathLike[str] | None = None,
                  step_summary: bool = True) -> dict[str, Any]:
    """Write the requested renderings; return what was written where."""
    inputs = [report.source, report.weights]
    written: dict[str, Any] = {}
    markdown = to_markdown(report)
    if json_path is not None:
        written["json"] = write_text(json_path, to_json(report), inputs=inputs)
    if markdown_path is not None:
        written["markdown"] = write_text(markdown_path, markdown, inputs=inputs)
    if step_summary:
        appended = append_step_summary(markdown)
        if appended is not None:
            written["step_summary"] = appended
    return written
