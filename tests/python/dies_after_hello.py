"""A user module whose workers die a few milliseconds after their hello,
every time, while the marker file named by $PYVISOR_TEST_DIE_MARKER exists:
the crash loop that restart intensity must stop (tests/integration/node).

The decision is taken per worker, in an on_start hook: with the fork-server
start method the module is imported once, by the template, and a thread
started at import would not survive the fork (the template refuses it)."""

import os
import threading
import time

import pyvisor

_marker = os.environ.get("PYVISOR_TEST_DIE_MARKER", "")


@pyvisor.on_start
def _maybe_die():
    if _marker and os.path.exists(_marker):
        def _die():
            time.sleep(0.005)  # the hello frame is sent right after the hooks
            os._exit(7)

        threading.Thread(target=_die, daemon=True).start()
