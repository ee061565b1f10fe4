"""Named points where a fault drill stops a process on purpose, to prove what survives a crash there.

A test or the fault drill starts a process with `ALGOTERM_FAILPOINTS="name=exit,other=raise"`; `exit` ends the
process at once (as a kill would: no cleanup, no answer), `raise` raises FailpointHit, `sleep:<seconds>` stalls
there (a slow step, such as a long backtest's day). Production refuses the
variable (settings), and a point nobody armed costs one dictionary lookup.
"""

from __future__ import annotations

import os
import time

ENV_VAR = "ALGOTERM_FAILPOINTS"
KILLED_EXIT_CODE = 137


class FailpointHit(RuntimeError):
    pass


def _armed(value: str) -> dict[str, str]:
    points = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, _, action = item.partition("=")
        points[name.strip()] = action.strip() or "exit"
    return points


ARMED = _armed(os.environ.get(ENV_VAR, ""))


def failpoint(name: str) -> None:
    action = ARMED.get(name)
    if action is None:
        return
    if action == "exit":
        os._exit(KILLED_EXIT_CODE)
    if action.startswith("sleep:"):
        time.sleep(float(action.removeprefix("sleep:")))
        return
    raise FailpointHit(name)
