"""A user module that logs with the standard `logging` module, at import and
in a command (tests/integration/node: records reach the node's log with their
level and logger name)."""

import logging

import pyvisor

log = logging.getLogger("logs_things")
log.info("imported")


@pyvisor.command("log.some")
def log_some(args, ctx):
    log.debug("not at info level: %s", args)
    log.info("an info record: %s", args)
    log.warning("a warning record\nwith a second line")
    try:
        1 / 0
    except ZeroDivisionError:
        log.exception("an error record")
    print("printed", args)
    return True
