"""Commands for tests/integration/node/test_shared_memory.py: large values
made and checked in the worker, and what its shared rings have carried."""

import hashlib
import os
import signal
import time

import pyvisor


def reproducible_bytes(n, seed):
    """n bytes from `seed` (the test makes the same ones to compare)."""
    out = bytearray()
    block = hashlib.sha256(seed.encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block * 64
    del out[n:]
    return out


@pyvisor.command("shm.digest")
def digest(args, ctx):
    """The sha256 of the bytes it was sent, and their length."""
    return {"sha256": hashlib.sha256(args).hexdigest(), "size": len(args)}


@pyvisor.command("shm.make")
def make(args, ctx):
    """args {n, seed, kind}: n bytes as kind (bytes, bytearray, memoryview,
    or a list holding them: not bytes-like itself, packed by msgpack)."""
    data = reproducible_bytes(args["n"], args["seed"])
    kind = args.get("kind", "bytes")
    if kind == "bytearray":
        return data
    if kind == "memoryview":
        return memoryview(data)
    if kind == "list":
        return [bytes(data)]
    return bytes(data)


@pyvisor.command("shm.rings")
def rings(args, ctx):
    """How far this worker's rings have moved: bytes read from the ring to
    it, bytes reserved in the ring from it (0, 0 without rings)."""
    r = ctx.worker.rings
    if r is None:
        return {"mapped": False, "read": 0, "written": 0}
    return {"mapped": True, "read": r[0]._read, "written": r[1]._head,
            "capacity": r[0].capacity}


@pyvisor.command("shm.die_after_reserve")
def die_after_reserve(args, ctx):
    """Reserves room for a large result in the ring from the worker, fills
    half of it and dies (SIGKILL) before any frame names it."""
    r = ctx.worker.rings[1]
    n = args["n"]
    pos = r.reserve(n)
    r.at(pos, n)[: n // 2] = b"\x00" * (n // 2)
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)


@pyvisor.command("shm.lie")
def lie(args, ctx):
    """Writes a reply that names shared bytes it never wrote (beyond the
    ring's end): the node must call it a protocol error, not read them."""
    w = ctx.worker
    w.send({"id": w.started, "ok": True, "result": None, "shm": [w.rings[1].capacity * 5 - 8, 64]})
    time.sleep(10)


@pyvisor.command("shm.chunks")
def chunks(args, ctx):
    """A stream of {n} chunks of {size} bytes each, chunk i made from seed
    "{seed}{i}"."""
    for i in range(args["n"]):
        yield bytes(reproducible_bytes(args["size"], "%s%d" % (args["seed"], i)))
    return args["n"]


@pyvisor.command("shm.amake")
async def amake(args, ctx):
    """shm.make from an async handler (on a concurrent worker's loop)."""
    import asyncio

    await asyncio.sleep(0)
    return bytes(reproducible_bytes(args["n"], args["seed"]))
