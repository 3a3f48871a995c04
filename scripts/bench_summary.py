#!/usr/bin/env python
"""Collect the three benchmark JSONs into one markdown table (bench-out/BENCHMARKS.md).

Reads ``convert.json`` (scripts/bench_convert.py), ``readers.json`` (scripts/bench_readers.py)
and ``embed.json`` (scripts/bench_embed.py) from the folder given, and names the machine.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def render(folder: Path) -> str:
    convert = json.loads((folder / "convert.json").read_text())
    readers = json.loads((folder / "readers.json").read_text())
    embed = json.loads((folder / "embed.json").read_text())
    lines = [(f"Machine: {os.cpu_count()} cores, {_cpu_model()}, Python "
             f"{platform.python_version()}, torch {embed['torch']}; medians of fresh-process "
             "runs, warm page cache."), "",
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
    lines += ["", (f"**Embedding throughput**, CPU, batch {embed['batch_size']} (images per second "
              "of wall time, and per second of the process's CPU time):"), "",
              "| threads | ours img/s | TF graph img/s | ours / TF | ours / TF per CPU-s |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for row in embed["rows"]:
        mine, theirs = row["images_per_s"]["ours"], row["images_per_s"]["tensorflow"]
        cpu = row["images_per_cpu_s"]["ours"] / row["images_per_cpu_s"]["tensorflow"]
        lines.append(f"| {row['threads']} | {mine:.1f} | {theirs:.1f} | {mine / theirs:.2f}x "
                     f"| {cpu:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    folder = Path(argv[0] if argv else "bench-out")
    text = render(folder)
    (folder / "BENCHMARKS.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
