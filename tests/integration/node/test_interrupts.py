"""Integration tests of issue #25: a slow, stuck, abandoned or cancelled
request costs only itself. Real Python workers, the node over TCP.

- a timed-out sleeping handler and a timed-out pure-Python loop answer
  `timeout` by their deadline, and every session of their worker keeps its
  state (same worker pid);
- a handler stuck in one long C call is answered by its deadline and killed
  after pool.interrupt-grace, its Python stack in the node's log;
- cancel of a queued, a written-but-not-started and a running request; a
  client that disconnects cancels what it had running;
- the interrupt race, at the protocol level against a worker process: an
  interrupt that arrives once its target has finished never hits the next
  request (and a mutant worker without the request-id check is caught);
- no head-of-line blocking: echoes written behind a slow request on a busy
  worker run on the idle one.

Run: PYVISOR_NODE=build/pyvisor-node python3 -m unittest -v test_interrupts
"""

import os
import signal
import socket
import struct
import subprocess
import time
import unittest

import msgpack

import test_node
from test_node import ROOT, TEST_PY, Rpc

PYTHON_DIR = os.path.join(ROOT, "python")


class InterruptTest(test_node.NodeTest):
    extra_ini = "[pool]\nsize=1\ninterrupt-grace=300ms\n"

    def tearDown(self):
        # Workers started after setUp (replacements of killed ones) too.
        if self.node.proc.poll() is None:
            self.pids = set(self.pids) | set(self.node.pids())
        super().tearDown()

    def call(self, *args):
        return self.rpc.call("execute", *args)

    def timed(self, *args):
        t0 = time.monotonic()
        err, res = self.call(*args)
        return err, res, time.monotonic() - t0

    def worker_pid(self):
        err, info = self.call("worker.info", None)
        self.assertIsNone(err, err)
        return info["pid"]

    def stats(self):
        err, st = self.rpc.call("stats")
        self.assertIsNone(err, err)
        return st

    def put(self, session, value):
        self.assertEqual(self.call("session.put", {"key": "k", "value": value},
                                   {"session": session}), (None, None))

    def get(self, session):
        return self.call("session.get", {"key": "k"}, {"session": session})


class TimeoutKeepsSessionsTest(InterruptTest):
    def check_timeout_keeps_sessions(self, command):
        self.put("keep", 41)
        self.put("other", 7)
        pid = self.worker_pid()
        err, _, took = self.timed(command, {"ms": 3000}, {"timeout_ms": 200})
        self.assertCode(err, "timeout")
        self.assertLess(took, 0.6, "answered %.3f s after it was sent" % took)
        self.assertEqual(self.get("keep"), (None, 41))
        self.assertEqual(self.get("other"), (None, 7))
        self.assertEqual(self.worker_pid(), pid)
        st = self.stats()
        self.assertEqual((st["recycled"], st["restarts"]), (0, 0), st)
        self.assertEqual(st["replies"].get("timeout"), 1, st)

    def test_a_timed_out_sleep_keeps_every_session(self):
        self.check_timeout_keeps_sessions("sleep")

    def test_a_timed_out_python_loop_keeps_every_session(self):
        self.check_timeout_keeps_sessions("spin")

    def test_the_interrupted_sessions_own_state_is_what_its_handler_left(self):
        err, _ = self.call("sleep_then_report", {"ms": 3000},
                           {"session": "mine", "timeout_ms": 200})
        self.assertCode(err, "timeout")
        # Its `finally` ran in the worker and left this behind.
        time.sleep(0.1)
        self.assertEqual(self.call("session.keys", None, {"session": "mine"}),
                         (None, ["finally_ran"]))

    def test_a_handler_knows_its_deadline(self):
        err, res = self.call("budget", None, {"timeout_ms": 5000})
        self.assertIsNone(err, err)
        self.assertFalse(res["cancelled"])
        self.assertGreater(res["left"], 4.0)
        self.assertLessEqual(res["left"], 5.0)

    def test_a_handler_stuck_in_a_c_call_is_killed_after_the_grace_with_its_stack_logged(self):
        self.put("keep", 1)
        pid = self.worker_pid()
        t0 = time.monotonic()
        stuck = self.rpc.send("execute", ["stuck", {"ms": 5000}, {"timeout_ms": 200}])
        behind = self.rpc.send("execute", ["session.get", {"key": "k"}, {"session": "keep"}])
        err, _ = self.rpc.wait(stuck)
        self.assertCode(err, "timeout")
        self.assertLess(time.monotonic() - t0, 0.6)  # by its deadline, not after the grace
        # The session request waiting behind it is lost with the worker, and
        # its caller learns where the worker was stuck.
        err, _ = self.rpc.wait(behind)
        self.assertCode(err, "session_lost")
        self.assertIn("in stuck", err.get("details", ""))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.stats()["recycled"] < 1:
            time.sleep(0.05)
        self.assertEqual(self.stats()["recycled"], 1)
        # Killed: its sessions are gone with it, a new worker serves.
        self.assertCode(self.get("keep")[0], "session_lost")
        self.assertNotEqual(self.worker_pid(), pid)
        log = self.node.read_log()
        self.assertIn("request", log)
        self.assertIn("('stuck') still ran 300 ms after it was interrupted", log)
        self.assertIn("(pid %d)" % pid, log)
        self.assertIn('testing.py", line', log)
        self.assertIn("in stuck", log)


class CancelTest(InterruptTest):
    extra_ini = "[pool]\nsize=1\nmax-in-flight=1\ninterrupt-grace=300ms\n"

    def cancel(self, msgid):
        self.rpc.sock.sendall(msgpack.packb([2, "cancel", [msgid]]))

    def test_a_queued_request_cancelled_never_runs(self):
        slow = self.rpc.send("execute", ["sleep", {"ms": 400}])
        queued = self.rpc.send("execute", ["session.put", {"key": "k", "value": 1},
                                           {"session": "s"}])
        time.sleep(0.05)
        t0 = time.monotonic()
        self.cancel(queued)
        err, _ = self.rpc.wait(queued)
        self.assertCode(err, "cancelled")
        self.assertLess(time.monotonic() - t0, 0.2)
        self.assertEqual(self.rpc.wait(slow), (None, 400))
        self.assertEqual(self.get("s"), (None, None))

    def test_a_running_request_cancelled_is_interrupted(self):
        self.put("keep", 5)
        pid = self.worker_pid()
        running = self.rpc.send("execute", ["sleep", {"ms": 5000}])
        time.sleep(0.2)
        t0 = time.monotonic()
        self.cancel(running)
        err, _ = self.rpc.wait(running)
        self.assertCode(err, "cancelled")
        # The worker is free at once and kept its sessions.
        self.assertEqual(self.call("echo", 1), (None, 1))
        self.assertLess(time.monotonic() - t0, 0.5)
        self.assertEqual(self.get("keep"), (None, 5))
        self.assertEqual(self.worker_pid(), pid)
        self.assertEqual(self.stats()["replies"].get("cancelled"), 1)

    def test_a_cancel_of_an_answered_or_unknown_request_is_ignored(self):
        done = self.rpc.send("execute", ["echo", 1])
        self.assertEqual(self.rpc.wait(done), (None, 1))
        self.cancel(done)
        self.cancel(12345)
        self.assertEqual(self.rpc.call("cancel", 777), (None, True))
        self.assertEqual(self.call("echo", 2), (None, 2))
        self.assertIsNone(self.stats()["replies"].get("cancelled"))

    def test_a_bad_cancel_is_bad_request(self):
        err, _ = self.rpc.call("cancel", "x")
        self.assertCode(err, "bad_request")

    def test_a_client_that_disconnects_cancels_what_it_had_running(self):
        gone = Rpc(self.node.port)
        gone.send("execute", ["sleep", {"ms": 5000}])
        time.sleep(0.2)
        gone.close()
        t0 = time.monotonic()
        self.assertEqual(self.call("echo", 1), (None, 1))
        self.assertLess(time.monotonic() - t0, 1.0, "the gone client's request kept the worker")
        self.assertEqual(self.stats()["replies"].get("cancelled"), 1)

    def test_a_half_closed_client_still_gets_its_replies(self):
        half = Rpc(self.node.port)
        msgid = half.send("execute", ["sleep", {"ms": 300}])
        half.sock.shutdown(socket.SHUT_WR)
        self.assertEqual(half.wait(msgid), (None, 300))
        half.close()


class WrittenNotStartedTest(InterruptTest):
    extra_ini = "[pool]\nsize=1\nmax-in-flight=4\ninterrupt-grace=300ms\n"

    def test_a_written_request_cancelled_is_revoked_and_never_runs(self):
        slow = self.rpc.send("execute", ["sleep", {"ms": 500}])
        written = self.rpc.send("execute", ["session.put", {"key": "k", "value": 1},
                                            {"session": "s"}])
        time.sleep(0.1)
        self.assertEqual(self.stats()["workers"][0]["in_flight"], 2)  # both on the worker
        t0 = time.monotonic()
        self.rpc.sock.sendall(msgpack.packb([2, "cancel", [written]]))
        err, _ = self.rpc.wait(written)
        self.assertCode(err, "cancelled")
        self.assertLess(time.monotonic() - t0, 0.2)
        self.assertEqual(self.rpc.wait(slow), (None, 500))
        self.assertEqual(self.get("s"), (None, None))


class NoHeadOfLineBlockingTest(InterruptTest):
    extra_ini = "[pool]\nsize=2\nmax-in-flight=4\n"

    def test_echoes_behind_a_slow_request_run_on_the_idle_worker(self):
        t0 = time.monotonic()
        slow = self.rpc.send("execute", ["sleep", {"ms": 2000}])
        quick = self.rpc.send("execute", ["sleep", {"ms": 100}])
        echoes = [self.rpc.send("execute", ["echo", i]) for i in range(6)]
        for i, msgid in enumerate(echoes):
            self.assertEqual(self.rpc.wait(msgid), (None, i))
            took = time.monotonic() - t0
            self.assertLess(took, 0.4, "echo %d answered after %.3f s" % (i, took))
        self.assertEqual(self.rpc.wait(quick), (None, 100))
        self.assertEqual(self.rpc.wait(slow), (None, 2000))


class SessionActiveTest(InterruptTest):
    extra_ini = "[pool]\nsize=1\n[session]\ntimeout=500ms\ncleanup-interval=50ms\n"

    def test_a_session_does_not_expire_during_its_own_long_call(self):
        self.put("long", 3)
        self.assertEqual(self.call("sleep", {"ms": 900}, {"session": "long"}), (None, 900))
        self.assertEqual(self.get("long"), (None, 3))
        time.sleep(0.8)  # idle now, from the end of its last request
        self.assertCode(self.get("long")[0], "session_expired")


class WorkerProcess:
    """A worker process driven directly over its pipes and control socket
    (docs/protocol.md), no node: the protocol's own guarantees."""

    def __init__(self, modules=()):
        req_r, self.req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        self.ctl, child_ctl = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ, PYTHONPATH=PYTHON_DIR + ":" + TEST_PY)
        fds = {3: req_r, 4: rep_w, 5: child_ctl.fileno()}

        def arrange():
            moved = {t: os.dup(f) for t, f in fds.items()}
            for t, f in moved.items():
                os.dup2(f, t)

        args = ["-c", "import sys; from pyvisor.worker import main; sys.exit(main())",
                "--in-fd", "3", "--out-fd", "4", "--control-fd", "5",
                "--module", "pyvisor.testing"]
        for m in modules:
            args += ["--module", m]
        self.proc = subprocess.Popen(["/usr/bin/python3"] + args, env=env, pass_fds=(3, 4, 5),
                                     preexec_fn=arrange, start_new_session=True)
        for fd in (req_r, rep_w):
            os.close(fd)
        child_ctl.close()
        self.rep = os.fdopen(rep_r, "rb")
        self.next_id = 0
        hello = self.read()
        assert hello.get("control"), hello

    def read(self):
        (n,) = struct.unpack(">I", self.rep.read(4))
        return msgpack.unpackb(self.rep.read(n), raw=False)

    def send(self, cmd, args):
        self.next_id += 1
        body = msgpack.packb({"id": self.next_id, "cmd": cmd, "args": args, "session": None})
        os.write(self.req_w, struct.pack(">I", len(body)) + body)
        return self.next_id

    def control(self, msg):
        self.ctl.send(msgpack.packb(msg))
        os.kill(self.proc.pid, signal.SIGUSR1)

    def close(self):
        os.close(self.req_w)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.rep.close()
        self.ctl.close()


class InterruptRaceTest(unittest.TestCase):
    def run_race(self, modules=()):
        """Interrupts each finished request while the next one runs; returns
        the replies of the requests that were running then."""
        w = WorkerProcess(modules)
        try:
            hits = []
            for _ in range(5):
                done = w.send("echo", 1)
                self.assertTrue(w.read()["ok"])
                running = w.send("spin", {"ms": 150})
                time.sleep(0.03)
                w.control({"interrupt": done, "reason": "timeout"})
                hits.append(w.read())
                self.assertEqual(hits[-1]["id"], running)
            return hits
        finally:
            w.close()

    def test_an_interrupt_for_a_finished_request_never_hits_the_next(self):
        for reply in self.run_race():
            self.assertTrue(reply["ok"], reply)

    def test_the_race_catches_a_worker_without_the_request_id_check(self):
        # The mutation: the same handler without the check. The same race
        # must show it: the interrupt lands in the request running then.
        replies = self.run_race(["mutant_interrupts"])
        self.assertTrue(any(not r["ok"] for r in replies), replies)

    def test_a_revoke_takes_only_what_has_not_begun(self):
        w = WorkerProcess()
        try:
            running = w.send("sleep", {"ms": 300})
            waiting = w.send("session.put", {"key": "k", "value": 1})
            time.sleep(0.05)
            w.control({"revoke": [running, waiting]})
            self.assertEqual(msgpack.unpackb(w.ctl.recv(1024)), {"revoked": [waiting]})
            first = w.read()
            self.assertEqual((first["id"], first["ok"]), (running, True))
            # The revoked request is never run and never answered.
            after = w.send("echo", 2)
            self.assertEqual(w.read()["id"], after)
        finally:
            w.close()


if __name__ == "__main__":
    unittest.main()
