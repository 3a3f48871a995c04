#!/usr/bin/env python
"""Collect the three benchmark JSONs into one markdown table (bench-out/BENCHMARKS.md).

Reads ``convert.json`` (scripts/bench_convert.py), ``readers.json`` (scripts/bench_readers.py)
and ``embed.json`` (scripts/bench_embed.py) from the folder given, and names the machine;
``detect.json`` (scripts/bench_detect.py) adds the MTCNN rows when present, ``scale.json``
(scripts/bench_scale.py) the local vs Ray engine rows.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from facenet_convert.converter.core.machine import machine_line


def _machine(report: dict) -> str:
    """The machine a report ran on (older reports name only the CPU count)."""
    if isinstance(report.get("machine"), dict):
        return machine_line(report["machine"])
    return f"{os.cpu_count()} cores (CPU not recorded)"


def render(folder: Path) -> str:
    convert = json.loads((folder / "convert.json").read_text())
    readers = json.loads((folder / "readers.json").read_text())
    embed = json.loads((folder / "embed.json").read_text())
    machines = {_machine(report) for report in (convert, readers, embed)}
    lines = [*(f"Machine: {line}" for line in sorted(machines)),
             "", "Medians of fresh-process runs, warm page cache.", "",
             (f"**Convert** a release-sized upstream checkpoint "
             f"({convert['data_bytes'] / 1e6:.0f} MB data, EMA + Adam slots; "
             f"{convert['needed_bytes'] / 1e6:.0f} MB needed):"), "",
             "| approach | wall s | peak RSS MiB |", "| --- | ---: | ---: |"]
    for name, row in convert["results"].items():
        lines.append(f"| {name} | {row['median_s']:.2f} | {row['peak_rss_mib']:.0f} |")
    lines += ["", f"`.pt` / floor: {convert['pt_vs_floor']:.2f}x."]
    if "safetensors_speedup_vs_tf1" in convert:
        lines[-1] += (" TF1 session / `.safetensors`: "
                      f"{convert['safetensors_speedup_vs_tf1']:.1f}x; TF1 session / `.pt`: "
                      f"{convert['pt_speedup_vs_tf1']:.1f}x.")
    ours, tf = readers["medians"]["ours"], readers["medians"]["tensorflow"]
    lines += ["", f"**Read all {readers['tensors']} tensors** of the same checkpoint:", "",
              "| reader | wall s | of which read s | peak RSS MB |", "| --- | ---: | ---: | ---: |",
              f"| ours | {ours['wall_s']:.2f} | {ours['read_s']:.2f} | {ours['maxrss_mb']:.0f} |",
              (f"| tf.train.load_checkpoint + get_tensor | {tf['wall_s']:.2f} | "
              f"{tf['read_s']:.2f} | {tf['maxrss_mb']:.0f} |"),
              "", (f"TF / ours: {readers['tf_over_ours']['wall_s']:.1f}x wall, "
              f"{readers['tf_over_ours']['read_s']:.1f}x read step, "
              f"{readers['tf_over_ours']['maxrss_mb']:.1f}x peak memory.")]
    peaks = embed["peaks_gflop_per_s"]
    lines += ["", (f"**Embedding throughput**, CPU, batch {embed['batch_size']}, "
              f"{embed['gflop_per_image']} GFLOP per image; matmul peak "
              + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()) + ":"), "",
              "| path | img/s | GFLOP/s | of matmul peak | max abs diff vs TF |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for row in embed["rows"]:
        lines.append(f"| {row['path']} | {row['images_per_s']:.1f} | {row['gflop_per_s']:.0f} "
                     f"| {row['of_peak']:.0%} ({row['peak']}) "
                     f"| {row['max_abs_diff_vs_tf']:.1e} |")
    for name, figures in (embed.get("reduced_vs_fp32") or {}).items():
        lines += ["", f"{name} vs fp32: {json.dumps(figures)}"]
    if (folder / "detect.json").is_file():
        lines += _detection_rows(json.loads((folder / "detect.json").read_text()))
    if (folder / "scale.json").is_file():
        lines += _scale_rows(json.loads((folder / "scale.json").read_text()))
    return "\n".join(lines) + "\n"


def _detection_rows(detect: dict) -> list[str]:
    """MTCNN rows (scripts/bench_detect.py): ours vs upstream TF detect_face, ms per image."""
    lines = ["", ("**MTCNN detection**, CPU, ms per image (mean over the photos of each "
             "photo's median; upstream = davidsandberg's detect_face on TF; load average "
             f"{detect['load_average'][0]:.1f}):"), "",
             ("| photos | TF ms | TF nets ms | ours ms | ours / TF | ours, 8-photo list ms "
              "| list / TF | nets floor ms |"),
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in detect["rows"]:
        lines.append(f"| {row['size']} ({row['photos']} photos, {row['faces']} faces) "
                     f"| {row['tf_ms']:.1f} | {row['tf_nets_ms']:.1f} | {row['ours_ms']:.1f} "
                     f"| {row['ratio']:.2f}x | {row['ours_batched_ms']:.1f} "
                     f"| {row['ours_batched_ms'] / row['tf_ms']:.2f}x "
                     f"| {row['nets_floor_ms']:.1f} |")
    lines += ["", (f"detect -> crop -> embed: {detect['chain_faces_per_s']:.1f} faces/s "
              f"({detect['chain_faces']} faces in {detect['chain_photos']} photos).")]
    return lines


def _scale_rows(scale: dict) -> list[str]:
    """Local engine vs --engine ray (scripts/bench_scale.py): CLI wall and steady rates."""
    lines = ["", (f"**Local vs `--engine ray`** ({scale['actors']} actors on {scale['cores']} "
             f"cores; CLI wall = process start to exit; steady = models loaded; load average "
             f"{scale['load_average'][0]:.1f}):"), "",
             ("| step | inputs | local s | ray s | ray / local | steady local /s/core "
              "| steady ray /s/actor | identical |"),
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for row in scale["rows"]:
        lines.append(f"| {row['step']} | {row['count']} {row['unit']} | {row['local_s']:.1f} "
                     f"| {row['ray_s']:.1f} | {row['overhead']:.2f}x "
                     f"| {row['steady_local_per_core_s']:.1f} "
                     f"| {row['steady_ray_per_actor_s']:.1f} | {row['identical']} |")
    return lines


def main(argv: list[str]) -> int:
    folder = Path(argv[0] if argv else "bench-out")
    text = render(folder)
    (folder / "BENCHMARKS.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
