"""User commands used by pyvisor's integration tests (a user module as users write them)."""

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
