"""User commands used by pyvisor's integration tests (a user module as users write them)."""

import os

import pyvisor


@pyvisor.command("divide")
def divide(args, ctx):
    return args["a"] / args["b"]


@pyvisor.command("counter.incr")
def incr(args, ctx):
    ctx.session["n"] = ctx.session.get("n", 0) + 1
    return ctx.session["n"]


@pyvisor.command("shout")
def shout(args, ctx):
    print("shouting", args)
    return str(args).upper()


_hoard = []


@pyvisor.command("hog")
def hog(args, ctx):
    """Keeps `args` MiB alive in this worker (pool.max-rss tests)."""
    _hoard.append(bytearray(int(args) * 1024 * 1024))
    return len(_hoard)


@pyvisor.command("env")
def env(args, ctx):
    """The worker's values of the environment variables named in `args`."""
    return [os.environ.get(name) for name in args]
