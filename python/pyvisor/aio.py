"""The worker's event loop: async handlers, and requests served concurrently.

A handler that is an ``async def`` (or an async generator, which streams)
runs here as an asyncio task. With ``pool.worker-concurrency = 1`` (the
default) the worker still runs one request at a time: an async request runs
on this loop until it is done (``run_one``). With N > 1 the whole worker is
served from this loop (``serve``): up to N requests run at once, async ones
interleaving at their awaits, while sync handlers still run one at a time,
on the loop's thread (the other requests wait at their awaits meanwhile).

What the node relies on (docs/protocol.md, "Concurrent workers"):
- a request runs only once the worker has said so: a ``{id, started: true}``
  frame goes out before its handler does, so that when the worker dies the
  node knows exactly which requests never began (and runs them elsewhere);
- a session's requests run one after another, in the order they came;
- a revoke takes only requests that have not begun; an interrupt cancels an
  async request's task (``CancelledError`` at its await; answered with the
  interrupt's code, ``timeout`` or ``cancelled``) or raises
  ``pyvisor.Interrupted`` in the sync handler running now;
- a stream's generator waits for credit at an await, holding up no other
  request.

Control messages that arrive with SIGUSR1 while the loop runs its own code
are taken over by the loop (``take_control``) and handled between its
callbacks, so that a revoke never races the start of the request it names.
"""

import asyncio
import os
import struct
import sys
import types
from collections import deque

_HEADER = struct.Struct(">I")


class EventLoop:
    def __init__(self, worker, concurrent):
        from pyvisor import worker as w

        self.w = worker
        self._worker_module = w
        self.concurrent = concurrent
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.tasks = {}  # id -> the task running it
        self.reasons = {}  # id -> why it was interrupted
        self.credits = {}  # stream id -> chunks its consumer has taken
        self.credit_events = {}  # stream id -> set when credit comes
        # Concurrent serving: what was read and waits to begin, sessions with
        # a request running, the highest id read.
        self.waiting = deque()
        self.busy_sessions = set()
        self.active = 0
        self.max_read = 0
        self.limit = worker.concurrency if concurrent else 1
        if worker.ctl is not None:
            # Credit comes without a signal: the loop reads it when it runs.
            self.loop.add_reader(worker.ctl, self._control_readable)

    # -- control --------------------------------------------------------------------

    def _control_readable(self):
        self.w._interrupt_if_due(self.w._handle_control(self.w._read_packets()))

    def take_control(self, msgs):
        """From the SIGUSR1 handler: the interrupt of the sync handler running
        now is returned (to be raised at once); the rest is handled on the
        loop, after what it is doing now."""
        now = {}
        if self.w.running:
            for msg in msgs:
                t = msg.get("interrupt")
                reason = "timeout" if msg.get("reason") == "timeout" else "cancelled"
                for i in (t if isinstance(t, list) else [t]):
                    if i == self.w.started:
                        now[i] = reason
        self.loop.call_soon_threadsafe(self._deferred_control, msgs)
        return now

    def _deferred_control(self, msgs):
        self.interrupt(self.w._handle_control(msgs))

    def revocable(self, rid):
        return rid > self.max_read or any(r.get("id") == rid for r in self.waiting)

    def revoked(self, ids):
        """`ids` were revoked: those read already leave the waiting line
        (the others are dropped when read, _admit)."""
        gone = set(ids)
        for r in [r for r in self.waiting if r.get("id") in gone]:
            self.waiting.remove(r)
            self.w.revoked.discard(r.get("id"))

    def credit(self, rid, taken):
        # Only for streams running here (a sequential worker's sync stream
        # keeps its own count): nothing is kept for any other id.
        if rid in self.credits and taken > self.credits[rid]:
            self.credits[rid] = taken
            event = self.credit_events.get(rid)
            if event is not None:
                event.set()

    def interrupt(self, interrupts):
        for rid, reason in interrupts.items():
            task = self.tasks.get(rid)
            if task is not None and rid not in self.reasons:
                self.reasons[rid] = reason  # ctx.cancelled from now on
                self.loop.call_soon_threadsafe(task.cancel)

    # -- running one request --------------------------------------------------------

    async def _run(self, rid, obj, window):
        """The request's result: a coroutine's value, or a generator's
        (async or sync) values as a stream (with `window`) or one list."""
        # Not asyncio.iscoroutine: it takes plain generators for coroutines.
        is_async = isinstance(obj, types.AsyncGeneratorType)
        if not is_async and not isinstance(obj, types.GeneratorType):
            return await obj
        if window is None:
            try:
                if is_async:
                    return [x async for x in obj]
                return [x for x in self._sync_values(rid, obj)]
            finally:
                await self._close(obj, is_async)
        return await self._stream(rid, obj, is_async, window)

    def _sync_values(self, rid, gen):
        """A sync generator's values, each computed as its handler runs
        (interruptible by pyvisor.Interrupted)."""
        while True:
            try:
                yield self._next_sync(rid, gen)
            except StopIteration:
                return

    def _next_sync(self, rid, gen):
        w = self.w
        w.started, w.running = rid, True
        try:
            return next(gen)
        finally:
            w.running = False

    async def _close(self, gen, is_async):
        if is_async:
            await gen.aclose()
        else:
            gen.close()

    async def _stream(self, rid, gen, is_async, window):
        room = self._worker_module.StreamWindow(window)
        self.credits[rid] = 0
        event = self.credit_events[rid] = asyncio.Event()
        try:
            while True:
                try:
                    value = await gen.__anext__() if is_async else self._next_sync(rid, gen)
                except StopAsyncIteration:
                    return None
                except StopIteration as stop:
                    return stop.value
                while not room.has_room(self.credits.get(rid, 0)):
                    event.clear()
                    await event.wait()
                room.sent_one(self.w.send_value(rid, value, chunk=True))
        finally:
            self.credits.pop(rid, None)
            self.credit_events.pop(rid, None)
            await self._close(gen, is_async)

    async def _task(self, rid, obj, window):
        """Runs one async request; its outcome as a reply."""
        try:
            result = await self._run(rid, obj, window)
        except asyncio.CancelledError:
            reason = self.reasons.get(rid)
            if reason is None:
                raise
            exc = self._worker_module.interrupted(rid, reason)
            return {"id": rid, "ok": False, "error": self._worker_module._error_map(exc)}
        except BaseException as exc:  # noqa: BLE001  the caller gets it; the worker serves on
            return {"id": rid, "ok": False, "error": self._worker_module._error_map(exc)}
        return {"id": rid, "ok": True, "result": result}

    def run_one(self, rid, obj, window):
        """Sequential worker: runs one async request on the loop until done;
        its reply."""
        task = self.loop.create_task(self._task(rid, obj, window))
        self.tasks[rid] = task
        try:
            return self.loop.run_until_complete(task)
        finally:
            self.tasks.pop(rid, None)
            self.reasons.pop(rid, None)

    # -- serving concurrently -------------------------------------------------------

    def serve(self):
        """Serves the worker's requests from the loop until EOF on its
        request pipe and every request read is answered; the exit code."""
        self.in_fd = self.w.inp.fileno()
        os.set_blocking(self.in_fd, False)
        self.buf = bytearray()
        self.eof = self.loop.create_future()
        self.exit_code = 0
        self.loop.add_reader(self.in_fd, self._input)
        self.loop.run_until_complete(self._until_done())
        return self.exit_code

    async def _until_done(self):
        await self.eof
        while self.active or self.waiting:
            await asyncio.sleep(0.01)

    def _input(self):
        try:
            data = os.read(self.in_fd, 1 << 16)
        except BlockingIOError:
            return
        if not data:
            self._end(0)
            return
        self.buf += data
        while len(self.buf) >= 4:
            (size,) = _HEADER.unpack_from(self.buf)
            if len(self.buf) < 4 + size:
                break
            body = bytes(self.buf[4:4 + size])
            del self.buf[:4 + size]
            try:
                req = self.w.decode_frame(body)
            except Exception as exc:  # noqa: BLE001
                sys.stderr.write("pyvisor: undecodable request frame: %s\n" % exc)
                self._end(self._worker_module.EXIT_PROTOCOL)
                return
            self._admit(req)

    def _end(self, code):
        self.loop.remove_reader(self.in_fd)
        self.exit_code = code
        if not self.eof.done():
            self.eof.set_result(None)

    def _admit(self, req):
        rid = req.get("id")
        if isinstance(rid, int) and rid > self.max_read:
            self.max_read = rid
        if rid in self.w.revoked:
            self.w.revoked.discard(rid)  # revoked before it was read: never runs
            return
        self.waiting.append(req)
        self._pump()

    def _pump(self):
        """Begins what may begin: in arrival order, up to the limit, a
        session's next request only once its last one is answered."""
        skipped = []
        while self.waiting and self.active < self.limit:
            req = self.waiting.popleft()
            session = req.get("session")
            if session is not None and session in self.busy_sessions:
                skipped.append(req)
                continue
            self._begin(req)
        self.waiting.extendleft(reversed(skipped))

    def _begin(self, req):
        rid = req.get("id")
        session = req.get("session")
        # Said before anything of it runs: from here a revoke cannot take it.
        self.w.send({"id": rid, "started": True})
        self.active += 1
        if session is not None:
            self.busy_sessions.add(session)
        try:
            prepared = self.w.begin(req)
        except BaseException as exc:  # noqa: BLE001  e.g. a session id that is a list
            prepared = {"id": rid, "ok": False, "error": self._worker_module._error_map(exc)}
        if isinstance(prepared, dict):
            self._finish(req, prepared)
            return
        rid, ctx, obj = prepared
        task = self.loop.create_task(self._task(rid, obj, self._worker_module._window_of(
            req, self.w.ctl)))
        self.tasks[rid] = task
        task.add_done_callback(lambda t, req=req: self._task_done(req, t))

    def _task_done(self, req, task):
        rid = req.get("id")
        self.tasks.pop(rid, None)
        self.reasons.pop(rid, None)
        self.w.served += 1
        if task.cancelled():
            reply = {"id": rid, "ok": False, "error": self._worker_module._error_map(
                self._worker_module.interrupted(rid, "cancelled"))}
        else:
            reply = task.result()
        self._finish(req, reply)

    def _finish(self, req, reply):
        self.w.reply(reply)
        self.active -= 1
        session = req.get("session")
        if session is not None:
            self.busy_sessions.discard(session)
        self.loop.call_soon(self._pump)

