"""A user module whose workers die a few milliseconds after their hello,
every time, while the marker file named by $PYVISOR_TEST_DIE_MARKER exists:
the crash loop that restart intensity must stop (tests/integration/node)."""

import os
import threading
import time

_marker = os.environ.get("PYVISOR_TEST_DIE_MARKER", "")

if _marker and os.path.exists(_marker):
    def _die():
        time.sleep(0.005)  # the hello frame is sent right after this import
        os._exit(7)

    threading.Thread(target=_die, daemon=True).start()
