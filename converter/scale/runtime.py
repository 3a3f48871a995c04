"""Ray itself: options, a loopback-only local cluster or a given one, and the actor pools that
map shards."""

from __future__ import annotations

import os
import signal
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from facenet_convert.converter.core.atomic import interruption, reclaim_signal_handlers
from facenet_convert.converter.core.errors import ScaleError
from facenet_convert.converter.core.extras import require_extra
from facenet_convert.converter.core.stderr import held_stderr

DEFAULT_SHARD_SIZE = 1024
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"     # "0": Ray binds and talks on loopback


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray engine runs."""

    address: str | None = None      # None: start a local Ray bound to 127.0.0.1
    actors: int = 2
    shard_size: int = DEFAULT_SHARD_SIZE
    max_retries: int = 3            # actor restarts and task retries after a worker death
    local_cpus: int | None = None   # CPUs of a Ray started here (None: the actor count)


def is_loopback(address: str | None) -> bool:
    """Whether Ray is to run on this machine only: no address, or a loopback one."""
    if address is None:
        return True
    host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def require_ray(loopback: bool = False) -> Any:
    """The ``ray`` module, or a one-line error saying how to install it.

    ``loopback``: keep Ray on 127.0.0.1. Ray (2.60) otherwise rewrites 127.0.0.1 to the node's
    outward address and listens on every interface; its "no cluster" mode (the variable below,
    read at import and inherited by the processes it starts, and the constant it sets) keeps
    every address and socket on the loopback interface.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # the driver's core worker logs, at error level, expected events of a retried actor
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    # the core worker's C++ crash handler also takes SIGTERM: it printed a stack and aborted
    # (exit -6) when the signal came while ray.init ran; read at import
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    if loopback:
        os.environ[LOOPBACK_ENV] = "0"
    require_extra("ray", "--engine ray (Ray Data)")
    import ray
    import ray.data
    if loopback:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False        # when ray was imported before
    return ray


def start_ray(options: RayOptions) -> bool:
    """Connect to ``options.address`` or start a loopback-only local Ray; True if started
    here (the caller shuts it down). An already initialized Ray is used as it is."""
    ray = require_ray(loopback=is_loopback(options.address))
    import logging

    logging.getLogger("ray.data").setLevel(logging.CRITICAL)   # its errors end as ScaleError
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    if ray.is_initialized():
        return False
    try:
        try:
            with held_stderr():     # the core worker announces RAY_BACKEND_LOG_LEVEL there
                if options.address:
                    ray.init(address=options.address, log_to_driver=False,
                             logging_level=logging.ERROR)
                else:
                    ray.init(num_cpus=options.local_cpus or options.actors,
                             _node_ip_address="127.0.0.1", include_dashboard=False,
                             log_to_driver=False, logging_level=logging.ERROR)
        finally:
            reclaim_signal_handlers()   # ray.init's SIGTERM handler: sys.exit(15), no line
    except SystemExit as error:     # that handler ran: the run was interrupted
        if error.code != signal.SIGTERM:
            raise
        # what ray.init started is stopped here: left to the interpreter's exit, a half-made
        # driver connection crashed it (SIGSEGV after the interrupted line)
        with suppress(Exception):
            ray.shutdown()
        raise interruption(signal.SIGTERM) from None
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = options.address or "a local Ray on 127.0.0.1"
        message = " ".join(str(error).split())[:300]
        raise ScaleError(f"cannot start or reach Ray ({where}): {message}") from None
    return True


def forwarded_env() -> dict[str, str]:
    """This process's FACENET_CONVERT_* settings (pixel cap, cache, offline), for the actors,
    which Ray starts with the raylet's environment, not ours."""
    return {k: v for k, v in os.environ.items() if k.startswith("FACENET_CONVERT_")}

