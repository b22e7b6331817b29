"""A mutant of the worker's interrupt handler without its request-id check:
loaded as a user module by the interrupt-race test, which must catch it (an
interrupt meant for a finished request then hits the next one)."""

import msgpack
import os

import pyvisor
from pyvisor import worker


def _on_control_without_id_check(self, signum, frame):
    hit = False
    while True:
        try:
            data = os.read(self.ctl, 1 << 16)
        except OSError:
            break
        if not data:
            break
        msg = msgpack.unpackb(data, raw=False)
        if isinstance(msg, dict) and msg.get("interrupt") is not None:
            hit = True
    if hit and self.running:
        raise pyvisor.Interrupted("mutant", "cancelled")


worker.Worker._on_control = _on_control_without_id_check
