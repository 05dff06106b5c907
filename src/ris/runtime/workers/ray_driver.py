"""Ray imported as this process's driver needs it: import this module before ray.

Ray ends a driver whose connection to its node's raylet fails once it takes that raylet for
dead, and a driver, which has no raylet pid of its own (RAY_RAYLET_PID, an internal flag read
once, when ray is imported), judges by its parent: a parent of pid 1, as a systemd service, a
daemon or a container's child has, counts as dead. So the head's return ended `ris serve` at
its rejoin (ray.shutdown() writes to the socket of the head's raylet, gone with it) in 4 of 5
head losses of an operator's run, and in none under a shell. The pid given here is this
process's own, never dead while it asks: RIS watches the head itself (RayWorkers). The variable
is taken out of the environment again once ray has read it, so no process started from here
inherits it (a `ray start` would take it for its own).
"""

from __future__ import annotations

import os
import sys

RAYLET_PID = "RAY_RAYLET_PID"

if "ray" not in sys.modules:  # else it has read the flag already (a Ray worker: its raylet's)
    _outside = os.environ.get(RAYLET_PID)
    os.environ[RAYLET_PID] = str(os.getpid())
    try:
        import ray  # noqa: F401 - read now, with the flag above
    finally:
        if _outside is None:
            del os.environ[RAYLET_PID]
        else:
            os.environ[RAYLET_PID] = _outside
