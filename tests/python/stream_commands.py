"""Streaming handlers for tests/integration/node/test_streams.py."""

import os
import time

import pyvisor


@pyvisor.command("stream.stamped")
def stamped(args, ctx):
    """Yields {i, t} n times, {ms} apart: t is time.monotonic() at the yield
    (the machine's clock, the test's too)."""
    for i in range(args["n"]):
        time.sleep(args["ms"] / 1000.0)
        yield {"i": i, "t": time.monotonic()}
    return "done"


@pyvisor.command("stream.gated")
def gated(args, ctx):
    """Yields "first", then waits (at most 10 s) until the file {path}
    exists, which the test creates once it has the first chunk: the first
    chunk must reach the caller while the generator still runs."""
    yield "first"
    deadline = time.monotonic() + 10
    while not os.path.exists(args["path"]) and time.monotonic() < deadline:
        time.sleep(0.005)
    yield "second" if os.path.exists(args["path"]) else "timed out waiting for the caller"
    return "done"


@pyvisor.command("stream.pid")
def pid_then_wait(args, ctx):
    """Yields {pid: this worker's pid}, then {n} more chunks {ms} apart."""
    yield {"pid": os.getpid()}
    for i in range(args["n"]):
        time.sleep(args["ms"] / 1000.0)
        yield i
