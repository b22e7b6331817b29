"""A user module with per-worker set-up (tests/integration/node/test_fork_server.py):
an on_start hook that appends this worker's pid and a random number to the file named by
$PYVISOR_TEST_ON_START_LOG, and commands that tell which process serves and
what its random generator says."""

import os
import random

import pyvisor

_started = []


@pyvisor.on_start
def _note_start():
    _started.append(os.getpid())
    path = os.environ.get("PYVISOR_TEST_ON_START_LOG")
    if path:
        with open(path, "a") as f:
            f.write("%d %d\n" % (os.getpid(), random.getrandbits(64)))


@pyvisor.command("whoami")
def whoami(args, ctx):
    return {"pid": os.getpid(), "ppid": os.getppid(), "pgid": os.getpgrp(),
            "on_start_runs": len(_started), "random": random.getrandbits(64)}
