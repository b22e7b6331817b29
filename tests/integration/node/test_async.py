"""Async handlers and concurrent workers (issue #28) against a real node:
many waiting calls per worker with pool.worker-concurrency, sync handlers
still one at a time, session order, a timeout that cancels only its own
request, a killed worker whose never-started requests run elsewhere, async
generators that stream and close, and async handlers on a sequential worker.

Run: PYVISOR_NODE=build/pyvisor-node python3 -m unittest -v test_async
"""

import asyncio
import os
import random
import signal
import sys
import time
import unittest

from test_cluster import Proc, wait_for, worker_sections
from test_node import ROOT, wait_gone

sys.path.insert(0, os.path.join(ROOT, "python"))
from pyvisor.client import AsyncClient, Client, RemoteError  # noqa: E402


def sections(size, concurrency, **pool):
    s = worker_sections(size)
    s["pool"]["modules"] = '["pyvisor.testing", "async_commands"]'
    s["pool"]["worker-concurrency"] = concurrency
    s["pool"].update(pool)
    s["log"] = {"level": '"warn"'}
    return s


class AsyncTest(unittest.TestCase):
    size = 1
    concurrency = 8
    pool = {}

    def setUp(self):
        self.node = Proc(sections(self.size, self.concurrency, **self.pool))
        self.pids = self.node.pids()
        self.client = Client("127.0.0.1", self.node.port)

    def tearDown(self):
        self.client.close()
        self.node.close()
        self.assertTrue(wait_gone(self.pids), "a Python worker outlived its node")

    def gather(self, requests):
        """Sends every (command, args, options) at once; their outcomes in order."""
        ids = [self.client.send("execute", [c, a, o]) for c, a, o in requests]
        out = []
        for i in ids:
            try:
                out.append(self.client.receive(i))
            except RemoteError as e:
                out.append(e)
        return out


class ManySessionsTest(AsyncTest):
    size = 2
    concurrency = 32

    def test_sixty_sessions_of_slow_calls_on_two_workers(self):
        rng = random.Random(28)

        async def session(c, n):
            for _ in range(2):
                ms = rng.randint(200, 2000)
                t0 = time.monotonic()
                got = await c.execute("async.sleep", {"ms": ms}, session="s%d" % n,
                                      timeout_ms=5000)
                self.assertEqual(got["ms"], ms)
                self.assertLess(time.monotonic() - t0, 5.0)

        async def main():
            async with await AsyncClient.connect("127.0.0.1", self.node.port) as c:
                await asyncio.gather(*(session(c, n) for n in range(60)))

        asyncio.run(main())
        st = self.node.stats()
        self.assertEqual(st["replies"].get("ok"), 120, st["replies"])
        self.assertEqual(st["restarts"] + st["recycled"], 0)
        self.assertEqual(st["capacity"], 64)


class ConcurrencyTest(AsyncTest):
    def test_async_requests_interleave_and_sync_ones_do_not(self):
        spans = self.gather([("async.window", {"ms": 300}, {})] * 8)
        # All eight ran at once on the one worker.
        self.assertLess(max(b for _, b in spans) - min(a for a, _ in spans), 0.29 * 8 / 2)
        self.assertTrue(all(a < min(b for _, b in spans) for a, _ in spans))
        spans = sorted(self.gather([("sync.span", {"ms": 60}, {})] * 4))
        for (_, end), (start, _) in zip(spans, spans[1:]):
            self.assertGreaterEqual(start, end, "two sync handlers ran at once")

    def test_a_sessions_requests_still_run_one_after_another(self):
        spans = self.gather([("async.window", {"ms": 60}, {"session": "s"})] * 4
                            + [("async.window", {"ms": 60}, {"session": "t"})] * 4)
        s, t = spans[:4], spans[4:]
        for run in (s, t):
            for (_, end), (start, _) in zip(run, run[1:]):
                self.assertGreaterEqual(start, end, "a session's requests overlapped")
        self.assertLess(t[0][0], s[-1][1], "two sessions did not interleave")

    def test_a_timeout_cancels_only_its_own_request(self):
        out = self.gather([("async.sleep", {"ms": 2000}, {"timeout_ms": 150, "session": "a"}),
                           ("async.sleep", {"ms": 400}, {"session": "b"}),
                           ("async.sleep", {"ms": 400}, {})])
        self.assertIsInstance(out[0], RemoteError)
        self.assertEqual(out[0].code, "timeout")
        self.assertEqual(out[1]["ms"], 400)
        self.assertEqual(out[2]["ms"], 400)
        # Cancelled as a task: its finally ran and saw ctx.cancelled, its
        # session lives on, the worker too.
        self.assertIs(wait_for(lambda: self.client.execute(
            "session.get", {"key": "finally"}, session="a")), True)
        st = self.node.stats()
        self.assertEqual(st["restarts"] + st["recycled"], 0)

    def test_a_cancel_mid_stream_closes_the_async_generator(self):
        with self.client.stream("async.count_session", {"n": 1000, "ms": 5}, session="g") as s:
            for x in s:
                if x == 3:
                    break
        closed = wait_for(lambda: self.client.execute("session.get", {"key": "closed"},
                                                      session="g"))
        self.assertGreaterEqual(closed, 4)
        s = self.client.stream("async.count", {"n": 5})
        self.assertEqual(list(s), [0, 1, 2, 3, 4])
        self.assertEqual(self.client.execute("async.count", {"n": 3}), [0, 1, 2])
        # Sync generators too, on the loop: streamed, and as one list.
        s = self.client.stream("stream.count", {"n": 3})
        self.assertEqual((list(s), s.result), ([0, 1, 2], 3))
        self.assertEqual(self.client.execute("stream.count", {"n": 3}), [0, 1, 2])


class StreamWaitTest(AsyncTest):
    def test_a_stream_waiting_for_its_reader_holds_up_no_other_request(self):
        import msgpack
        import socket
        slow = socket.create_connection(("127.0.0.1", self.node.port))
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        try:
            # A sync generator offering gigabytes to a reader that reads
            # nothing: it waits for credit, on the loop.
            slow.sendall(msgpack.packb([0, 1, "execute", [
                "stream.count", {"n": 100000, "size": 65536},
                {"stream": True, "timeout_ms": 60000}]]))
            time.sleep(0.5)
            # The same worker serves others meanwhile, sync and async alike.
            self.assertEqual(self.client.execute("async.sleep", {"ms": 10}, timeout_ms=5000)["ms"],
                             10)
            self.assertEqual(self.client.execute("echo", 3, timeout_ms=5000), 3)
            self.assertEqual(self.node.stats()["streams_open"], 1)
        finally:
            slow.close()


class KillTest(AsyncTest):
    concurrency = 4
    pool = {"max-in-flight": 10}  # all ten written to the worker, four begun

    def test_a_killed_worker_requeues_exactly_what_it_had_not_started(self):
        ids = [self.client.send("execute", ["async.sleep", {"ms": 600}, {"timeout_ms": 10000}])
               for _ in range(10)]
        time.sleep(0.2)  # four run, six wait on the worker
        os.kill(self.pids[0], signal.SIGKILL)
        outcomes = []
        for i in ids:
            try:
                outcomes.append(self.client.receive(i)["pid"])
            except RemoteError as e:
                outcomes.append(e.code)
        self.assertEqual(outcomes.count("worker_crashed"), 4, outcomes)
        self.assertEqual(len([o for o in outcomes if isinstance(o, int)]), 6, outcomes)
        self.assertNotIn(self.pids[0], outcomes)
        self.assertEqual(self.node.stats()["requeued"], 6)
        self.pids = list(set(self.pids + self.node.pids()))


class SequentialTest(AsyncTest):
    concurrency = 1

    def test_async_handlers_on_a_sequential_worker(self):
        self.assertEqual(self.client.execute("async.sleep", {"ms": 10})["ms"], 10)
        spans = self.gather([("async.window", {"ms": 50}, {})] * 3)
        for (_, end), (start, _) in zip(spans, spans[1:]):
            self.assertGreaterEqual(start, end)
        with self.assertRaises(RemoteError) as e:
            self.client.execute("async.sleep", {"ms": 2000}, session="a", timeout_ms=100)
        self.assertEqual(e.exception.code, "timeout")
        self.assertIs(wait_for(lambda: self.client.execute(
            "session.get", {"key": "finally"}, session="a")), True)
        s = self.client.stream("async.count", {"n": 3, "ms": 5})
        self.assertEqual(list(s), [0, 1, 2])
        self.assertEqual(self.node.stats()["restarts"], 0)


if __name__ == "__main__":
    unittest.main()
