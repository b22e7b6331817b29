"""A user module as heavy as the ones that motivated the fork server (DSPy and
the like): its import burns about 300 ms of CPU and builds a 64 MiB table of
Python objects. pyvisor-bench's `forkserver` scenario starts pools with it."""

import hashlib
import time

import pyvisor

_t0 = time.process_time()
_h = b"pyvisor"
while time.process_time() - _t0 < 0.3:
    for _ in range(1000):
        _h = hashlib.sha256(_h).digest()

# About 64 MiB: 2 M floats (24 B each) in a list (8 B per slot).
TABLE = [float(i) * 1.5 for i in range(2 * 1024 * 1024)]


@pyvisor.command("heavy.lookup")
def lookup(args, ctx):
    return TABLE[int(args) % len(TABLE)]
