"""Built-in commands every worker serves (names fixed by the protocol spec)."""

import os
import sys

import pyvisor
from pyvisor import BadRequest, command

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _session(ctx):
    if ctx.session is None:
        raise BadRequest("this command needs a session")
    return ctx.session


def _key(args):
    if not isinstance(args, dict) or "key" not in args:
        raise BadRequest("expected a map with 'key'")
    return args["key"]


@command("ping")
def ping(args, ctx):
    return "pong"


@command("echo")
def echo(args, ctx):
    return args


@command("worker.info")
def worker_info(args, ctx):
    with open("/proc/self/statm", "rb") as f:
        rss_pages = int(f.read().split()[1])
    w = ctx.worker
    return {
        "pid": os.getpid(),
        "python": sys.version.split()[0],
        "sessions": len(w.sessions),
        "served": w.served,
        "rss": rss_pages * _PAGE,
    }


@command("session.put")
def session_put(args, ctx):
    state = _session(ctx)
    if not isinstance(args, dict) or "value" not in args:
        raise BadRequest("expected a map with 'key' and 'value'")
    state[_key(args)] = args["value"]
    return None


@command("session.get")
def session_get(args, ctx):
    return _session(ctx).get(_key(args))


@command("session.keys")
def session_keys(args, ctx):
    return list(_session(ctx).keys())


@command("session.drop")
def session_drop(args, ctx):
    """Forgets the calling session's state (the runtime sends it on expiry)."""
    if ctx.session_id is None:
        raise BadRequest("this command needs a session")
    return ctx.worker.sessions.pop(ctx.session_id, None) is not None


assert pyvisor.lookup("ping") is ping
