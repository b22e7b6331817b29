"""pyvisor: Python commands served to C++ by a supervised pool of workers.

Register a command with the decorator and name your module in the node's
configuration (``pool.modules``)::

    import pyvisor

    @pyvisor.command("add")
    def add(args, ctx):
        return args["a"] + args["b"]

``args`` is the decoded msgpack value the caller sent. ``ctx.session`` is a
dict holding the calling session's state inside this worker process (``None``
for a stateless call); the runtime routes every call of one session to the
same worker. Raise :class:`BadRequest` for invalid arguments; any other
exception is reported to the caller as ``python_error`` with its traceback.
"""

__version__ = "0.1.0"

__all__ = ["command", "commands", "on_start", "Context", "Error", "BadRequest", "Interrupted"]

_registry = {}
_on_start = []


class Error(Exception):
    """An error reported to the caller with a specific pyvisor error code."""

    code = "python_error"


class BadRequest(Error):
    """The caller sent arguments the command cannot use."""

    code = "bad_request"


class Interrupted(BaseException):
    """Raised inside a handler the node interrupts: its request timed out or
    was cancelled (``code`` says which). A ``BaseException``, like
    ``KeyboardInterrupt``, so that ``except Exception`` in user code lets it
    through; ``finally`` blocks and context managers run as it unwinds. The
    worker answers and goes on serving; a session keeps the state the
    handler left. A handler that swallows it (or is stuck in one C call) is
    killed after the node's ``pool.interrupt-grace``."""

    code = "cancelled"

    def __init__(self, message="", code="cancelled"):
        super().__init__(message)
        self.code = code


def command(name):
    """Registers ``fn(args, ctx)`` as the handler of command ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError("pyvisor.command needs a non-empty name")

    def decorate(fn):
        previous = _registry.get(name)
        if previous is not None and previous is not fn:
            raise ValueError(
                "command %r is already registered by %s.%s"
                % (name, previous.__module__, previous.__qualname__)
            )
        _registry[name] = fn
        return fn

    return decorate


def on_start(fn):
    """Registers ``fn()`` to run once in every worker, before it serves.

    With ``pool.start-method = fork-server`` modules are imported once, in a
    template process that forks the workers; whatever must exist per process
    (threads, sockets, connections, seeded random generators other than
    ``random``'s) belongs in such a hook, which runs after the fork. With
    ``spawn`` it runs right after the imports. A hook that raises fails the
    worker's start-up with its traceback, like a module that fails to import.
    """
    if not callable(fn):
        raise ValueError("pyvisor.on_start needs a callable")
    _on_start.append(fn)
    return fn


def run_on_start():
    """Runs the registered hooks in order (the worker calls this)."""
    for fn in _on_start:
        fn()


def commands():
    """Returns the names of all registered commands, sorted."""
    return sorted(_registry)


def lookup(name):
    return _registry.get(name)


class Context:
    """What a handler knows about the call besides its arguments.

    ``deadline``: when the caller stops waiting, in ``time.monotonic()``
    terms (None when the node did not say), e.g. to pass a budget on:
    ``timeout=ctx.deadline - time.monotonic()``. ``cancelled``: whether the
    node has interrupted this call (timed out or cancelled), for code that
    polls, in another thread say; the handler's own thread gets
    :class:`Interrupted` raised."""

    __slots__ = ("session_id", "session", "worker", "deadline", "_rid")

    def __init__(self, session_id, session, worker, deadline=None, rid=None):
        self.session_id = session_id
        self.session = session
        self.worker = worker
        self.deadline = deadline
        self._rid = rid

    @property
    def cancelled(self):
        if self._rid is None:
            return False
        if getattr(self.worker, "interrupted_id", None) == self._rid:
            return True
        aio = getattr(self.worker, "aio", None)  # an async request's interrupt
        return aio is not None and self._rid in aio.reasons
