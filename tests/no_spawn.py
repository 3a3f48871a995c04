"""An audit hook that refuses every process start, for tests that prove nothing spawns."""

#: Python source to run first in a child interpreter: any process start ends it with
#: ``SPAWNED <event>`` on stderr (subprocess, os.system, exec*, posix_spawn, fork).
NO_SPAWN = """
import sys
def _refuse(event, args):
    if event in ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                 "os.fork", "os.forkpty"):
        raise SystemExit(f"SPAWNED {event} {args!r:.300}")
sys.addaudithook(_refuse)
"""
