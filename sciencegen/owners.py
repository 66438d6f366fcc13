"""Who owns a temporary file: the host and process in its name (one rule for every temp name of the package).

A writer names its temporary ``NAME.KIND-HOST-PID``; a later run removes only the temporaries of processes that
no longer exist on this host, never a live writer's or another host's.
"""

from __future__ import annotations

import os
import re
import socket

__all__ = ["host_tag", "pid_alive"]


def host_tag() -> str:
    """This host's name, reduced to characters that cannot confuse the temp-file pattern."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (``True`` when unsure, so nothing live is deleted)."""
    if pid <= 0 or os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    return True
