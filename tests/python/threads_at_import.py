"""A user module that starts a thread at import: fine with start-method
spawn, refused with fork-server (the template would fork a process whose
other threads vanish in every worker, locks held)."""

import threading
import time

threading.Thread(target=lambda: time.sleep(3600), daemon=True).start()
