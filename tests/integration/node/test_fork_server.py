"""Integration tests of issue #13: workers forked from a template
interpreter (pool.start-method = fork-server), against a real node.

Every test kills its node in tearDown, even on failure, and checks that no
process of the node's tree (template, workers, their guards) outlives it.

Run: PYVISOR_NODE=build/pyvisor-node python3 -m unittest -v test_fork_server
"""

import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest

from test_node import NODE, TEST_PY, Node, Rpc, wait_gone

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "chaos"))
from chaos import parents, descendants_of  # noqa: E402  (the harness's /proc scan)


def ppid_map():
    """pid -> (ppid, command line) of every live process."""
    result = {}
    for pid, ppid in parents().items():
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                result[pid] = (ppid, f.read().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            pass
    return result


def descendants(root):
    return set(descendants_of(root))


class ForkServerTest(unittest.TestCase):
    start_method = "fork-server"

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.on_start_log = os.path.join(self.tmp.name, "on_start.log")
        os.environ["PYVISOR_TEST_ON_START_LOG"] = self.on_start_log
        try:
            self.node = Node('[pool]\nstart-method="%s"\nsize=3\nstartup-timeout=2s\n'
                             'modules=["pyvisor.testing", "per_worker"]\n' % self.start_method)
        finally:
            del os.environ["PYVISOR_TEST_ON_START_LOG"]
        self.rpc = Rpc(self.node.port)
        self.seen = descendants(self.node.proc.pid)

    def tearDown(self):
        self.seen |= descendants(self.node.proc.pid)
        self.rpc.close()
        self.node.close()
        self.tmp.cleanup()
        self.assertTrue(wait_gone(self.seen), "a process of the node's tree outlived it")

    def stats(self):
        err, st = self.rpc.call("stats")
        self.assertIsNone(err, err)
        return st

    def worker_pids(self):
        return sorted(w["pid"] for w in self.stats()["workers"])

    def templates(self):
        procs = ppid_map()
        return [p for p, (pp, cmd) in procs.items()
                if pp == self.node.proc.pid and "pyvisor.forkserver" in cmd]

    def on_start_lines(self):
        with open(self.on_start_log) as f:
            return [tuple(int(x) for x in line.split()) for line in f if line.strip()]

    def wait_for(self, predicate, limit, what):
        deadline = time.time() + limit
        while time.time() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.01)
        self.fail("not within %.1f s: %s; stats %r" % (limit, what, self.stats()))

    def wait_all_ready(self, limit=10.0, other_than=()):
        def ready():
            ws = self.stats()["workers"]
            return all(w["state"] == "ready" and w["pid"] not in other_than for w in ws) and ws
        return self.wait_for(ready, limit, "all workers ready")


class ForkedWorkersTest(ForkServerTest):
    def test_workers_are_forked_from_one_template_in_their_own_groups(self):
        templates = self.templates()
        self.assertEqual(len(templates), 1, ppid_map())
        self.assertEqual(self.stats()["fork_template"], {"pid": templates[0], "restarts": 0})
        procs = ppid_map()
        for pid in self.worker_pids():
            self.assertEqual(procs[pid][0], templates[0], "worker %d's parent" % pid)
            self.assertEqual(os.getpgid(pid), pid, "a worker leads its own process group")
        self.assertEqual(os.getpgid(templates[0]), templates[0])

    def test_on_start_runs_once_per_worker_and_random_is_reseeded(self):
        pids = self.worker_pids()
        lines = self.on_start_lines()
        self.assertEqual(sorted(p for p, _ in lines), pids, lines)
        self.assertEqual(len({r for _, r in lines}), len(lines), "random not reseeded: %r" % lines)
        victim = pids[0]
        os.kill(victim, signal.SIGKILL)
        self.wait_all_ready(other_than=(victim,))
        lines = self.on_start_lines()
        self.assertEqual(len(lines), len(pids) + 1, lines)
        self.assertEqual(sorted(p for p, _ in lines), sorted(self.worker_pids() + [victim]))
        err, me = self.rpc.call("execute", "whoami", None)
        self.assertIsNone(err, err)
        self.assertEqual(me["on_start_runs"], 1)

    def test_a_killed_template_takes_its_workers_and_the_pool_comes_back(self):
        template = self.templates()[0]
        old = set(self.worker_pids())
        os.kill(template, signal.SIGKILL)
        self.assertTrue(wait_gone(old, 2.0), "workers outlived their template")
        self.wait_all_ready(limit=15.0, other_than=old)
        new_templates = self.templates()
        self.assertEqual(len(new_templates), 1)
        self.assertNotEqual(new_templates[0], template)
        self.assertEqual(self.stats()["fork_template"],
                         {"pid": new_templates[0], "restarts": 1})
        err, res = self.rpc.call("execute", "echo", 7)
        self.assertIsNone(err, err)
        self.assertEqual(res, 7)
        self.assertEqual(self.stats()["pool_restarts"], 0)

    def test_a_stopped_template_is_replaced_when_a_fork_stalls(self):
        template = self.templates()[0]
        os.kill(template, signal.SIGSTOP)
        try:
            victim = self.worker_pids()[0]
            os.kill(victim, signal.SIGKILL)
            # The replacement's fork stalls until its start-up deadline (2 s
            # here); the stopped template is then killed and the next one
            # forks it.
            self.wait_all_ready(limit=15.0, other_than=(victim,))
        finally:
            try:
                os.kill(template, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.assertTrue(wait_gone([template], 2.0), "the stopped template was not killed")
        self.assertNotIn(template, self.templates())
        self.assertEqual(self.stats()["fork_template"]["restarts"], 1)
        self.assertIn("it is stopped (SIGSTOP or a debugger); killing it", self.node.read_log())
        err, res = self.rpc.call("execute", "echo", 8)
        self.assertEqual((err, res), (None, 8))

    def test_node_sigkill_leaves_no_python_process(self):
        tree = descendants(self.node.proc.pid)
        self.assertGreaterEqual(len(tree), 1 + 3 * 2, tree)  # template, workers, guards
        self.node.proc.kill()
        self.node.proc.wait()
        self.assertTrue(wait_gone(tree, 5.0), "left: %r" % [p for p in tree if p in ppid_map()])


class SpawnTest(ForkServerTest):
    start_method = "spawn"

    def test_spawn_is_one_key_away(self):
        self.assertEqual(self.templates(), [])
        self.assertEqual(self.stats()["fork_template"], {"pid": 0, "restarts": 0})
        procs = ppid_map()
        for pid in self.worker_pids():
            self.assertEqual(procs[pid][0], self.node.proc.pid)
        self.assertEqual(sorted(p for p, _ in self.on_start_lines()), self.worker_pids())


class ThreadAtImportTest(unittest.TestCase):
    def start(self, method):
        with tempfile.TemporaryDirectory() as tmp:
            ini = os.path.join(tmp, "node.ini")
            with open(ini, "w") as f:
                f.write('[pool]\nstart-method="%s"\nmodules=["threads_at_import"]\n'
                        'python-path=["%s"]\n[rpc]\nport=0\n' % (method, TEST_PY))
            proc = subprocess.Popen([NODE, "--config-file=" + ini], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            seen = set()
            try:
                if method == "spawn":
                    line = proc.stdout.readline()
                    seen |= descendants(proc.pid)
                    proc.terminate()
                    out, err = proc.communicate(timeout=30)
                    return line, proc.returncode, err, seen
                t0 = time.time()
                while proc.poll() is None and time.time() - t0 < 30:
                    seen |= descendants(proc.pid)
                    time.sleep(0.01)
                out, err = proc.communicate(timeout=30)
                return out, proc.returncode, err, seen
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                self.assertTrue(wait_gone(seen), "a process outlived its node")

    def test_a_thread_at_import_fails_fork_server_start_up_with_the_fix(self):
        out, code, err, _ = self.start("fork-server")
        self.assertEqual(code, 1, err[-2000:])
        self.assertNotIn("listening on", out)
        self.assertIn("'threads_at_import' left 2 threads running", err)
        self.assertIn("@pyvisor.on_start", err)
        self.assertIn("start-method = spawn", err)

    def test_the_same_module_serves_with_spawn(self):
        line, code, err, _ = self.start("spawn")
        self.assertIn("listening on", line)
        self.assertEqual(code, 0, err[-2000:])


if __name__ == "__main__":
    unittest.main()
