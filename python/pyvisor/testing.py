"""Commands that misbehave on purpose, for pyvisor's own tests and chaos runs.

Not loaded by default: name ``pyvisor.testing`` in ``pool.modules`` to get them.
"""

import os
import time

from pyvisor import BadRequest, command


@command("sleep")
def sleep(args, ctx):
    if not isinstance(args, dict) or not isinstance(args.get("ms"), (int, float)):
        raise BadRequest("expected {ms: number}")
    time.sleep(args["ms"] / 1000.0)
    return args["ms"]


@command("stuck")
def stuck(args, ctx):
    """Sleeps {ms} with the interrupt signal blocked: what a handler stuck in
    one long C call looks like to the node (the interrupt cannot get in; a
    stack dump can)."""
    import signal

    if not isinstance(args, dict) or not isinstance(args.get("ms"), (int, float)):
        raise BadRequest("expected {ms: number}")
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
    try:
        time.sleep(args["ms"] / 1000.0)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGUSR1])
    return args["ms"]


@command("spin")
def spin(args, ctx):
    """A pure-Python loop of {ms} (no sleep, no I/O): interruptible only
    between bytecodes."""
    if not isinstance(args, dict) or not isinstance(args.get("ms"), (int, float)):
        raise BadRequest("expected {ms: number}")
    end = time.monotonic() + args["ms"] / 1000.0
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


@command("budget")
def budget(args, ctx):
    """What the handler sees of its call: seconds left to ctx.deadline, and
    whether ctx.cancelled (set once the node interrupts the call)."""
    left = None if ctx.deadline is None else ctx.deadline - time.monotonic()
    return {"left": left, "cancelled": ctx.cancelled}


@command("stream.count")
def stream_count(args, ctx):
    """A generator: yields 0..n-1 (or, with {size}, that many bytes each),
    sleeping {ms} before each; raises ValueError after {fail_after} chunks
    if given; returns n. In a session it records in `finally` how many
    chunks it produced (session key "stream_closed"), however it ends."""
    if not isinstance(args, dict) or not isinstance(args.get("n"), int) or args["n"] < 0:
        raise BadRequest("expected {n: count, ms: number, size: bytes, fail_after: count}")
    ms = args.get("ms", 0)
    size = args.get("size")
    fail_after = args.get("fail_after")
    produced = 0
    try:
        for i in range(args["n"]):
            if fail_after is not None and i == fail_after:
                raise ValueError("failed after %d chunks" % i)
            if ms:
                time.sleep(ms / 1000.0)
            produced += 1
            yield bytes(size) if size else i
        return args["n"]
    finally:
        if ctx.session is not None:
            ctx.session["stream_closed"] = produced


@command("sleep_then_report")
def sleep_then_report(args, ctx):
    """Sleeps {ms}; if interrupted, records in its session that its
    `finally` ran (state a handler leaves stays, as after any exception)."""
    try:
        time.sleep(args["ms"] / 1000.0)
    finally:
        if ctx.session is not None:
            ctx.session["finally_ran"] = True
    return args["ms"]


@command("crash")
def crash(args, ctx):
    code = args.get("code", 1) if isinstance(args, dict) else 1
    os._exit(int(code))


@command("hang")
def hang(args, ctx):
    while True:
        time.sleep(3600)


@command("garbage")
def garbage(args, ctx):
    # A length prefix followed by bytes no msgpack decoder accepts (0xc1 is
    # reserved and never valid).
    ctx.worker.write_raw(b"\x00\x00\x00\x04\xc1\xc1\xc1\xc1")
    return None


@command("raise")
def raise_(args, ctx):
    message = args.get("message", "raised on request") if isinstance(args, dict) else str(args)
    raise ValueError(message)


class _Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("__str__ of this exception raises too")


@command("raise_unprintable")
def raise_unprintable(args, ctx):
    raise _Unprintable()


@command("exit")
def exit_(args, ctx):
    # sys.exit() inside a handler: answered as python_error, the worker lives.
    import sys

    sys.exit(args.get("code", 0) if isinstance(args, dict) else 0)


@command("spawn_child")
def spawn_child(args, ctx):
    """Starts a process that sleeps for a minute and returns its pid: how
    == "fork" (os.fork) or "popen" (subprocess.Popen)."""
    how = args.get("how", "popen") if isinstance(args, dict) else "popen"
    if how == "fork":
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        return pid
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]).pid
