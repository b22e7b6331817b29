"""Async handlers for tests/integration/node/test_async.py."""

import asyncio
import os
import time

import pyvisor


@pyvisor.command("async.sleep")
async def sleep(args, ctx):
    """Awaits asyncio.sleep({ms}); in a session, records in `finally` whether
    it was cancelled (session key "finally")."""
    try:
        await asyncio.sleep(args["ms"] / 1000.0)
        return {"ms": args["ms"], "pid": os.getpid()}
    finally:
        if ctx.session is not None:
            ctx.session["finally"] = ctx.cancelled


@pyvisor.command("async.count")
async def count(args, ctx):
    """An async generator: yields 0..n-1, {ms} apart."""
    for i in range(args["n"]):
        await asyncio.sleep(args.get("ms", 0) / 1000.0)
        yield i


@pyvisor.command("async.window")
async def window(args, ctx):
    """{ms} of asyncio.sleep, then the time.monotonic() span it ran in."""
    t0 = time.monotonic()
    await asyncio.sleep(args["ms"] / 1000.0)
    return [t0, time.monotonic()]


@pyvisor.command("sync.span")
def span(args, ctx):
    """{ms} of time.sleep (blocking), then the span it ran in."""
    t0 = time.monotonic()
    time.sleep(args["ms"] / 1000.0)
    return [t0, time.monotonic()]


@pyvisor.command("async.count_session")
async def count_session(args, ctx):
    """An async generator in a session: yields 0..n-1, {ms} apart; records
    in `finally` how many it produced (session key "closed")."""
    produced = 0
    try:
        for i in range(args["n"]):
            await asyncio.sleep(args.get("ms", 0) / 1000.0)
            produced += 1
            yield i
    finally:
        ctx.session["closed"] = produced
