"""Native libraries' start-up lines kept off the terminal, shown again only when start-up fails.

TensorFlow's C++ logging writes to descriptor 2 before absl is initialised, whatever
TF_CPP_MIN_LOG_LEVEL says (the oneDNN notice), and Ray's core worker announces the log level it
was given ("Set ray log level from environment variable ..."). Neither is about the user's run.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from facenet_convert.converter.core.errors import Interrupted

__all__ = ["held_stderr"]


@contextmanager
def held_stderr() -> Iterator[None]:
    """Send descriptor 2 to a temporary file for the block; replay what it caught if the block
    fails (it may say why), drop it otherwise and when a signal or an exit request ended the
    block (the run's one line is then the interrupted line). Processes started meanwhile
    inherit the file."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except (Interrupted, SystemExit):
            raise
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            os.write(2, sink.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
