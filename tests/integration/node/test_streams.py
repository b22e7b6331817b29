"""Streaming results (issue #28) against a real node, over MessagePack-RPC:
chunks as they are produced and in order, the list form without the option,
errors after some chunks, deadlines over the whole stream, cancel and
disconnect mid-stream (the generator's finally runs, its session lives on),
a slow consumer's backpressure (the node's memory bounded, others served),
session order, no retry once a chunk was seen, the Python clients, and a
stream through a cluster front.

Run: PYVISOR_NODE=build/pyvisor-node python3 -m unittest -v test_streams
"""

import asyncio
import os
import signal
import socket
import sys
import tempfile
import time
import unittest

import msgpack

from test_cluster import Proc, free_port, wait_for, worker_sections
from test_node import ROOT, TEST_PY, wait_gone

sys.path.insert(0, os.path.join(ROOT, "python"))
from pyvisor.client import AsyncClient, Client, RemoteError  # noqa: E402


def sections(size=2, **pool):
    s = worker_sections(size)
    s["pool"]["modules"] = '["pyvisor.testing", "stream_commands"]'
    s["pool"].update(pool)
    s["log"] = {"level": '"warn"'}
    return s


class Conn:
    """A raw connection that keeps chunks and responses apart."""

    def __init__(self, port, rcvbuf=None):
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(30)
        self.sock.connect(("127.0.0.1", port))
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False,
                                         max_buffer_size=1 << 30)
        self.next_id = 0

    def send(self, method, params):
        self.next_id += 1
        self.sock.sendall(msgpack.packb([0, self.next_id, method, params], use_bin_type=True))
        return self.next_id

    def messages(self):
        """Each message as it arrives, with the time.monotonic() it was read."""
        while True:
            for msg in self.unpacker:
                yield time.monotonic(), msg
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("closed")
            self.unpacker.feed(data)

    def stream(self, msgid):
        """The chunks of `msgid` (with arrival times) and its response."""
        chunks = []
        for t, msg in self.messages():
            if msg[0] == 2 and msg[1] == "chunk" and msg[2][0] == msgid:
                chunks.append((t, msg[2][1]))
            elif msg[0] == 1 and msg[1] == msgid:
                return chunks, msg[2], msg[3]

    def call(self, method, *params):
        _, err, result = self.stream(self.send(method, list(params)))
        return err, result

    def close(self):
        self.sock.close()


class StreamTest(unittest.TestCase):
    pool = {}

    def setUp(self):
        self.node = Proc(sections(**self.pool))
        self.pids = self.node.pids()
        self.conn = Conn(self.node.port)

    def tearDown(self):
        self.conn.close()
        self.node.close()
        self.assertTrue(wait_gone(self.pids), "a Python worker outlived its node")

    def execute_stream(self, command, args, **opts):
        return self.conn.send("execute", [command, args, dict(opts, stream=True)])


class ChunksTest(StreamTest):
    def test_chunks_arrive_in_order_as_they_are_produced(self):
        chunks, err, result = self.conn.stream(
            self.execute_stream("stream.stamped", {"n": 10, "ms": 50}))
        self.assertIsNone(err)
        self.assertEqual(result, "done")
        self.assertEqual([c["i"] for _, c in chunks], list(range(10)))
        # Each arrived before the next one was produced, 50 ms later: none
        # waited for the end of the stream.
        for (arrived, chunk), (_, following) in zip(chunks, chunks[1:]):
            self.assertLess(arrived, following["t"], chunks)
        # Counted: one stream of ten chunks, none open.
        st = self.node.stats()
        cs = st["commands"]["stream.stamped"]
        self.assertEqual((cs["streams"], cs["chunks"]), (1, 10))
        self.assertGreater(cs["chunk_bytes"], 10 * 10)
        self.assertEqual(st["streams_open"], 0)

    def test_the_first_chunk_reaches_the_caller_while_the_generator_runs(self):
        with tempfile.TemporaryDirectory() as tmp:
            gate = os.path.join(tmp, "gate")
            msgid = self.execute_stream("stream.gated", {"path": gate})
            got = []
            for _, msg in self.conn.messages():
                if msg[0] == 2:
                    got.append(msg[2][1])
                    if got == ["first"]:
                        open(gate, "w").close()  # only now may it go on
                elif msg[1] == msgid:
                    self.assertIsNone(msg[2])
                    self.assertEqual(msg[3], "done")
                    break
            self.assertEqual(got, ["first", "second"])

    def test_without_the_option_a_generator_answers_one_list(self):
        self.assertEqual(self.conn.call("execute", "stream.count", {"n": 4}), (None, [0, 1, 2, 3]))
        # A stream asked of a handler that returns: its result, no chunks.
        chunks, err, result = self.conn.stream(self.execute_stream("echo", 5))
        self.assertEqual((chunks, err, result), ([], None, 5))

    def test_an_exception_after_three_chunks_answers_python_error_after_them(self):
        chunks, err, _ = self.conn.stream(
            self.execute_stream("stream.count", {"n": 10, "fail_after": 3}))
        self.assertEqual([c for _, c in chunks], [0, 1, 2])
        self.assertEqual(err["code"], "python_error")
        self.assertIn("failed after 3 chunks", err["message"])
        self.assertEqual(self.conn.call("execute", "ping", None), (None, "pong"))

    def test_the_deadline_covers_the_whole_stream(self):
        chunks, err, _ = self.conn.stream(
            self.execute_stream("stream.count", {"n": 100, "ms": 20}, timeout_ms=300))
        self.assertEqual(err["code"], "timeout")
        self.assertGreater(len(chunks), 3)
        self.assertLess(len(chunks), 100)
        self.assertEqual([c for _, c in chunks], list(range(len(chunks))))
        st = self.node.stats()
        self.assertEqual(st["restarts"] + st["recycled"], 0, "the interrupt kept the worker")

    def test_a_stream_holds_its_session_order(self):
        s = {"session": "s1"}
        first = self.execute_stream("stream.count", {"n": 5, "ms": 30}, **s)
        second = self.conn.send("execute", ["session.get", {"key": "stream_closed"}, s])
        order = []
        for _, msg in self.conn.messages():
            if msg[0] == 1:
                order.append(msg[1])
                if msg[1] == second:
                    # It ran after the stream ended: it sees what its finally left.
                    self.assertEqual(msg[3], 5)
                    break
        self.assertEqual(order, [first, second])


class CancelTest(StreamTest):
    def test_a_cancel_mid_stream_runs_finally_and_keeps_the_session(self):
        s = {"session": "s1"}
        self.assertEqual(self.conn.call("execute", "session.put", {"key": "k", "value": 1}, s)[0],
                         None)
        msgid = self.execute_stream("stream.count", {"n": 1000, "ms": 10}, **s)
        seen = 0
        for _, msg in self.conn.messages():
            if msg[0] == 2:
                seen += 1
                if seen == 5:
                    self.conn.sock.sendall(msgpack.packb([2, "cancel", [msgid]]))
            elif msg[1] == msgid:
                self.assertEqual(msg[2]["code"], "cancelled")
                break
        closed = wait_for(lambda: self.conn.call("execute", "session.get",
                                                 {"key": "stream_closed"}, s)[1])
        self.assertGreaterEqual(closed, 5)  # its finally ran, in the same session
        self.assertEqual(self.conn.call("execute", "session.get", {"key": "k"}, s), (None, 1))
        st = self.node.stats()
        self.assertEqual(st["restarts"] + st["recycled"], 0)

    def test_a_client_that_disconnects_mid_stream_closes_the_generator(self):
        other = Conn(self.node.port)
        s = {"session": "s2"}
        msgid = other.send("execute", ["stream.count", {"n": 100000, "ms": 5}, dict(s, stream=True)])
        for _, msg in other.messages():
            if msg[0] == 2 and msg[2][0] == msgid:
                break
        other.close()
        closed = wait_for(lambda: self.conn.call("execute", "session.get",
                                                 {"key": "stream_closed"}, s)[1])
        self.assertGreaterEqual(closed, 1)
        self.assertEqual(self.conn.call("execute", "ping", None), (None, "pong"))


def rss_mib(pid):
    """The node's own resident memory, without the pages of its workers'
    shared rings (RssShmem): those are a fixed buffer that large chunks pass
    through (pool.shared-memory each way per worker), bounded by
    ring_mib() on their own."""
    fields = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssShmem"):
                fields[key] = int(value.split()[0]) / 1024.0
    return fields["VmRSS"] - fields.get("RssShmem", 0.0)


def ring_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("RssShmem:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


class BackpressureTest(StreamTest):
    def test_a_consumer_that_stops_reading_bounds_the_nodes_memory(self):
        idle = rss_mib(self.node.proc.pid)
        slow = Conn(self.node.port, rcvbuf=65536)
        # Gigabytes on offer: 64 KiB chunks, 100000 of them.
        msgid = slow.send("execute", ["stream.count", {"n": 100000, "size": 65536},
                                      {"stream": True, "timeout_ms": 120000}])
        peak = idle
        for _ in range(20):
            time.sleep(0.1)
            peak = max(peak, rss_mib(self.node.proc.pid))
        self.assertLess(peak - idle, 256, "node RSS %.0f MiB above idle" % (peak - idle))
        self.assertEqual(self.node.stats()["streams_open"], 1)
        # The node serves others meanwhile.
        self.assertEqual(self.conn.call("execute", "echo", 1), (None, 1))
        # Reading again, the stream goes on where it stood, in order.
        got = 0
        for _, msg in slow.messages():
            if msg[0] == 2:
                self.assertEqual(msg[2][1], bytes(65536))
                got += 1
                if got == 2000:
                    break
        peak = max(peak, rss_mib(self.node.proc.pid))
        self.assertLess(peak - idle, 256)
        # The rings hold at most their size: two of 64 MiB per worker.
        self.assertLessEqual(ring_mib(self.node.proc.pid), 2 * 64 * 2 + 1)
        slow.sock.sendall(msgpack.packb([2, "cancel", [msgid]]))
        for _, msg in slow.messages():
            if msg[0] == 1 and msg[1] == msgid:
                self.assertEqual(msg[2]["code"], "cancelled")
                break
        slow.close()
        self.assertEqual(wait_for(lambda: self.node.stats()["streams_open"] == 0), True)


class RetryTest(StreamTest):
    pool = {"size": 1}

    def test_an_idempotent_stream_is_not_run_again_once_a_chunk_was_seen(self):
        msgid = self.execute_stream("stream.pid", {"n": 1000, "ms": 10}, idempotent=True)
        chunks = []
        for _, msg in self.conn.messages():
            if msg[0] == 2:
                chunks.append(msg[2][1])
                if len(chunks) == 3:
                    os.kill(chunks[0]["pid"], signal.SIGKILL)
            elif msg[1] == msgid:
                self.assertEqual(msg[2]["code"], "worker_crashed")
                break
        # Only the first worker's pid: nothing ran a second time.
        self.assertEqual(sum(1 for c in chunks if isinstance(c, dict)), 1)
        self.assertEqual(self.node.stats()["retries"], 0)
        self.pids = list(set(self.pids + self.node.pids()))


class ClientsTest(StreamTest):
    def test_the_blocking_client_streams(self):
        with Client("127.0.0.1", self.node.port) as c:
            s = c.stream("stream.count", {"n": 5, "ms": 10})
            self.assertEqual(list(s), [0, 1, 2, 3, 4])
            self.assertEqual(s.result, 5)
            s = c.stream("stream.count", {"n": 10, "fail_after": 2})
            got = []
            with self.assertRaises(RemoteError) as e:
                for x in s:
                    got.append(x)
            self.assertEqual(got, [0, 1])
            self.assertEqual(e.exception.code, "python_error")
            # Leaving early cancels it; the connection serves on.
            with c.stream("stream.count", {"n": 1000, "ms": 5}, session="c") as s:
                for x in s:
                    if x == 2:
                        break
            self.assertEqual(c.execute("echo", 1), 1)
            self.assertGreaterEqual(wait_for(lambda: c.execute(
                "session.get", {"key": "stream_closed"}, session="c")), 3)

    def test_the_asyncio_client_streams_and_cancels(self):
        async def main():
            async with await AsyncClient.connect("127.0.0.1", self.node.port) as c:
                s = await c.stream("stream.count", {"n": 4, "ms": 10})
                self.assertEqual([x async for x in s], [0, 1, 2, 3])
                self.assertEqual(s.result, 4)
                # As the issue writes it: `async for chunk in aclient.stream(...)`.
                self.assertEqual([x async for x in c.stream("stream.count", {"n": 2})], [0, 1])
                async with c.stream("stream.count", {"n": 1000, "ms": 5}, session="w") as s:
                    async for x in s:
                        if x == 1:
                            break
                for _ in range(100):
                    closed = await c.execute("session.get", {"key": "stream_closed"}, session="w")
                    if closed:
                        break
                    await asyncio.sleep(0.05)
                self.assertGreaterEqual(closed, 2)
                s = await c.stream("stream.count", {"n": 100000, "ms": 5}, session="a")

                async def consume():
                    async for _ in s:
                        pass
                task = asyncio.ensure_future(consume())
                await asyncio.sleep(0.1)
                task.cancel()
                with self.assertRaises(asyncio.CancelledError):
                    await task
                for _ in range(100):
                    closed = await c.execute("session.get", {"key": "stream_closed"}, session="a")
                    if closed:
                        break
                    await asyncio.sleep(0.05)
                self.assertGreater(closed, 0)
                self.assertEqual(await c.execute("echo", 2), 2)
        asyncio.run(main())


class FrontTest(unittest.TestCase):
    """A stream through a cluster front: the node's chunks reach the client
    in order, the client's credit reaches the node, a cancel the generator."""

    def setUp(self):
        self.publish_port = free_port()
        s = sections()
        s["publish"] = {"port": self.publish_port}
        self.node = Proc(s)
        self.pids = self.node.pids()
        self.front = Proc({"pool": {"size": 0}, "rpc": {"port": 0},
                           "cluster": {"peers": '["127.0.0.1:%d"]' % self.publish_port,
                                       "heartbeat": "200ms"},
                           "log": {"level": '"warn"'}})
        wait_for(lambda: self.front.stats()["capacity"] > 0)

    def tearDown(self):
        self.front.close()
        self.node.close()
        self.assertTrue(wait_gone(self.pids), "a Python worker outlived its node")

    def test_a_stream_through_a_front(self):
        conn = Conn(self.front.port, rcvbuf=65536)
        try:
            msgid = conn.send("execute", ["stream.count", {"n": 20, "ms": 5}, {"stream": True}])
            chunks, err, result = conn.stream(msgid)
            self.assertIsNone(err)
            self.assertEqual(result, 20)
            self.assertEqual([c for _, c in chunks], list(range(20)))
            # Backpressure across both hops: big chunks nobody reads stay
            # at the window, the front's memory bounded.
            idle = rss_mib(self.front.proc.pid)
            big = conn.send("execute", ["stream.count", {"n": 100000, "size": 65536},
                                        {"stream": True, "session": "f", "timeout_ms": 60000}])
            time.sleep(1.5)
            self.assertLess(rss_mib(self.front.proc.pid) - idle, 256)
            conn.sock.sendall(msgpack.packb([2, "cancel", [big]]))
            chunks, err, _ = conn.stream(big)
            self.assertEqual(err["code"], "cancelled")
            self.assertTrue(all(c == bytes(65536) for _, c in chunks))
            closed = wait_for(lambda: conn.call("execute", "session.get",
                                                {"key": "stream_closed"}, {"session": "f"})[1])
            self.assertGreater(closed, 0)  # the generator was closed on the node
        finally:
            conn.close()


if __name__ == "__main__":
    unittest.main()
