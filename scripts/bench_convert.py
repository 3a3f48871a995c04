"""Benchmark ``convert`` against the TF1-session approach and a floor, side by side.

On a release-sized upstream-graph checkpoint (512-d, 8631 classes, EMA, Adam slots: about
460 MB of data, built once with the test builder and cached), each approach runs
``--runs`` times in a fresh subprocess; we report the median wall time (interpreter start
included) and the peak RSS (the child's own ``VmHWM`` at exit):

- ``convert .pt``: ``facenet_convert.converter.convert(prefix, output=x.pt)``
- ``convert .safetensors``: the same to ``.safetensors`` (must not import torch)
- ``tf1 session``: ``import_meta_graph`` + ``restore`` + fetch the trainable variables +
  ``torch.save`` (how conversions were done before this tool)
- ``tf.train.load_checkpoint``: ``get_tensor`` of the needed tensors + ``torch.save`` (no
  graph, no renaming: a lower bound for any TF-based converter)
- ``floor``: import torch, read exactly the bytes of the tensors the model needs, torch.save

Targets (issue 4): ``.pt`` within 1.2x of the floor and peak RSS < 600 MiB; ``.safetensors``
at least 10x faster than the TF1 approach. Writes JSON and a markdown table.

    .venv/bin/python scripts/bench_convert.py [--runs 3] [--checkpoint-dir DIR]
        [--json bench_convert.json] [--markdown bench_convert.md]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from facenet_convert.converter.core.machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]

OURS = """
import sys
from facenet_convert.converter.conversion import convert
result = convert(sys.argv[1], output=sys.argv[2], force=True)
if sys.argv[2].endswith(".safetensors") and "torch" in sys.modules:
    raise SystemExit("torch was imported for a .safetensors conversion")
"""

TF1 = """
import sys
import tensorflow as tf
import torch
tf1 = tf.compat.v1
tf1.disable_eager_execution()
with tf1.Graph().as_default() as graph, tf1.Session(graph=graph) as sess:
    saver = tf1.train.import_meta_graph(sys.argv[1], clear_devices=True)
    saver.restore(sess, sys.argv[2])
    variables = tf1.trainable_variables()
    values = sess.run(variables)
state = {v.op.name: torch.from_numpy(x) for v, x in zip(variables, values)}
torch.save(state, sys.argv[3])
"""

LOAD_CHECKPOINT = """
import json, sys
import tensorflow as tf
import torch
names = [item[0] for item in json.loads(open(sys.argv[1]).read())]
reader = tf.train.load_checkpoint(sys.argv[2])
state = {name: torch.from_numpy(reader.get_tensor(name)) for name in names}
torch.save(state, sys.argv[3])
"""

FLOOR = """
import json, sys
import torch
spec = json.loads(open(sys.argv[1]).read())
state = {}
with open(sys.argv[2], "rb") as handle:
    for name, offset, size, shape in spec:
        handle.seek(offset)
        buf = bytearray(size)
        handle.readinto(buf)
        state[name] = torch.frombuffer(buf, dtype=torch.float32).reshape(shape)
torch.save(state, sys.argv[3])
"""


# Peak RSS is the child's own VmHWM (its address space after exec), written at exit:
# ru_maxrss from wait4 is not usable, Linux carries the parent's high-water mark into it.
PRELUDE = """
import atexit, os
def _hwm(path=os.environ["BENCH_HWM_FILE"]):
    with open("/proc/self/status") as status:
        line = next(l for l in status if l.startswith("VmHWM:"))
    with open(path, "w") as out:
        out.write(line.split()[1])
atexit.register(_hwm)
"""


def run_once(code: str, args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one fresh interpreter running ``code``."""
    with tempfile.NamedTemporaryFile(prefix="bench-hwm-", delete=False) as handle:
        hwm_file = handle.name
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3",
           "BENCH_HWM_FILE": hwm_file}
    try:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", PRELUDE + code, *args], cwd=ROOT,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              check=False)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"benchmark child failed ({proc.returncode}): "
                             f"{proc.stderr.decode(errors='replace')[-2000:]}")
        peak_kib = int(Path(hwm_file).read_text())
    finally:
        os.unlink(hwm_file)
    return wall, peak_kib / 1024.0


def needed_bytes(prefix: Path) -> tuple[list[list[object]], Path, int]:
    """(name, offset, size, shape) of each tensor the target needs, read from the plan."""
    from facenet_convert.converter.mapping import plan
    from facenet_convert.converter.recognition import detect
    from facenet_convert.converter.registry import get_architecture, get_table
    from facenet_convert.converter.sources.tf_bundle import TFCheckpointReader

    with TFCheckpointReader(prefix) as reader:
        tensors = reader.tensors()
        found = detect(tensors)
        table = get_table(found.table or "")
        layout = get_architecture(table.architecture).layout(found.embedding_size,
                                                             found.num_classes)
        the_plan = plan(table, tensors, layout)
        spec = []
        for assignment in the_plan.mapped:
            entry = reader.entry(assignment.source or "")
            spec.append([entry.name, entry.offset, entry.size, list(entry.shape)])
        total = sum(item[2] for item in spec)
        return spec, reader.shard_paths[0], total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--checkpoint-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=Path("bench_convert.json"))
    parser.add_argument("--markdown", type=Path, default=Path("bench_convert.md"))
    parser.add_argument("--skip-tf", action="store_true", help="leave the TF1 approach out")
    args = parser.parse_args(argv)

    from facenet_convert.third_party.facenet.testing.build import build_checkpoint
    from facenet_convert.third_party.wheels import cache_dir

    directory = args.checkpoint_dir or cache_dir() / "bench" / "release-512-8631"
    print(f"building/reusing the release-sized checkpoint in {directory} ...", flush=True)
    ckpt = build_checkpoint(directory, embedding_size=512, num_classes=8631, ema=True,
                            optimizer="ADAM")
    spec, data_file, needed = needed_bytes(ckpt.prefix)
    approaches: list[tuple[str, str, list[str]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-convert-") as tmp:
        out = Path(tmp)
        spec_path = out / "spec.json"
        spec_path.write_text(json.dumps(spec))
        approaches = [
            ("convert .pt", OURS, [str(ckpt.prefix), str(out / "ours.pt")]),
            ("convert .safetensors", OURS, [str(ckpt.prefix), str(out / "ours.safetensors")]),
            ("floor (torch + needed bytes)", FLOOR,
             [str(spec_path), str(data_file), str(out / "floor.pt")]),
        ]
        if not args.skip_tf:
            approaches.append(("tf1 session", TF1,
                               [str(ckpt.meta), str(ckpt.prefix), str(out / "tf1.pt")]))
            approaches.append(("tf.train.load_checkpoint", LOAD_CHECKPOINT,
                               [str(spec_path), str(ckpt.prefix), str(out / "lc.pt")]))
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in approaches}
        run_once(FLOOR, approaches[2][2])  # warm the page cache once
        for _ in range(args.runs):  # interleaved, so drift hits every approach alike
            for name, code, cargs in approaches:
                runs[name].append(run_once(code, cargs))
                print(f"  {name}: {runs[name][-1][0]:.2f} s, {runs[name][-1][1]:.0f} MiB",
                      flush=True)

    results = {name: {"median_s": statistics.median(w for w, _ in r),
                      "peak_rss_mib": max(m for _, m in r),
                      "runs_s": [round(w, 3) for w, _ in r]} for name, r in runs.items()}
    floor = results["floor (torch + needed bytes)"]["median_s"]
    pt = results["convert .pt"]
    st = results["convert .safetensors"]
    summary = {
        "checkpoint": str(ckpt.prefix), "data_bytes": ckpt.data_file.stat().st_size,
        "needed_bytes": needed, "tensors_needed": len(spec), "runs": args.runs,
        "results": results, "machine": describe_machine(),
        "pt_vs_floor": pt["median_s"] / floor,
        "pt_peak_rss_ok": pt["peak_rss_mib"] < 600,
    }
    if "tf1 session" in results:
        tf1 = results["tf1 session"]["median_s"]
        summary["safetensors_speedup_vs_tf1"] = tf1 / st["median_s"]
        summary["pt_speedup_vs_tf1"] = tf1 / pt["median_s"]
    args.json.write_text(json.dumps(summary, indent=2) + "\n")

    lines = [(f"Release-sized checkpoint: {summary['data_bytes'] / 1e6:.0f} MB data, "
             f"{len(spec)} tensors ({needed / 1e6:.0f} MB) needed; median of {args.runs} "
             "fresh-process runs."), "",
             "| approach | median s | peak RSS MiB |", "| --- | ---: | ---: |"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['median_s']:.2f} | {r['peak_rss_mib']:.0f} |")
    lines += ["", (f"- `.pt` vs floor: {summary['pt_vs_floor']:.2f}x (target <= 1.2x); "
                  f"peak RSS {pt['peak_rss_mib']:.0f} MiB (target < 600)")]
    if "safetensors_speedup_vs_tf1" in summary:
        lines.append(f"- `.safetensors` vs TF1 session: "
                     f"{summary['safetensors_speedup_vs_tf1']:.1f}x faster (target >= 10x); "
                     f"`.pt` {summary['pt_speedup_vs_tf1']:.1f}x faster")
    args.markdown.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
