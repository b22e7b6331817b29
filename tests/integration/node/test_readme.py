"""The README's snippets run as written (issue #27): the Python blocks marked
`<!-- runnable: commands -->` become the node's user module, and those marked
`<!-- runnable: client -->` run against a node started as the README says
(`--pool.modules=["my_commands", "pyvisor.testing"]`), with only the port
changed; the `<!-- runnable: hook -->` block (an on_start hook) is a module of
that node's too, given the connection it opens. Every Python block of the
README is one of these. The README's C++ example (examples/quick_start.cpp, shown whole) is
compiled and run against the installation by
tests/integration/examples/check_examples.sh.

Run: PYVISOR_NODE=build/pyvisor-node python3 -m unittest -v test_readme
"""

import os
import re
import subprocess
import sys
import tempfile
import unittest

from test_cluster import Proc
from test_node import ROOT, wait_gone

MARKED = re.compile(r"<!-- runnable: (\w+)[^>]*-->\n```python\n(.*?)```\n", re.S)


def snippets(kind):
    with open(os.path.join(ROOT, "README.md")) as f:
        return [code for k, code in MARKED.findall(f.read()) if k == kind]


class ReadmeTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        commands = snippets("commands")
        self.assertEqual(len(commands), 1, "one block of commands is marked in the README")
        with open(os.path.join(self.dir.name, "my_commands.py"), "w") as f:
            f.write(commands[0])
        # Commands shown further on (streaming), in a module of their own.
        with open(os.path.join(self.dir.name, "readme_extra.py"), "w") as f:
            f.write("import pyvisor\n\n\n" + "\n\n".join(snippets("extra")))
        hooks = snippets("hook")
        self.assertEqual(len(hooks), 1, "one on_start hook is marked in the README")
        # What the hook leaves to the reader (the connection it opens), and a
        # command that shows what the hook left in its worker.
        with open(os.path.join(self.dir.name, "readme_hook.py"), "w") as f:
            f.write("import pyvisor\n\n\ndef open_connection():\n    return {'pid': __import__('os').getpid()}\n\n\n"
                    + hooks[0] + "\n\n@pyvisor.command('readme.db')\ndef _db(args, ctx):\n    return db\n")
        # As the README starts it, with the snippet instead of the examples' copy.
        self.node = Proc({"pool": {"modules": '["my_commands", "pyvisor.testing", "readme_hook", '
                                              '"readme_extra"]',
                                   "python-path": '["%s"]' % self.dir.name},
                          "rpc": {"port": 0}})
        self.port = self.node.port
        self.pids = self.node.pids()

    def tearDown(self):
        self.node.close()
        self.dir.cleanup()
        self.assertTrue(wait_gone(self.pids), "a Python worker outlived its node")

    def test_every_python_block_is_run(self):
        with open(os.path.join(ROOT, "README.md")) as f:
            readme = f.read()
        self.assertEqual(len(MARKED.findall(readme)), readme.count("```python\n"),
                         "a Python block of the README is not marked runnable")

    def test_the_on_start_hook_runs_in_each_worker_after_the_fork(self):
        sys.path.insert(0, os.path.join(ROOT, "python"))
        from pyvisor.client import Client
        with Client("127.0.0.1", self.port) as c:
            for i in range(4):
                db = c.execute("readme.db", None, session="s%d" % i)
                info = c.execute("worker.info", None, session="s%d" % i)
                # The connection was opened by the worker that serves the
                # session, after the fork (not by the template).
                self.assertEqual(db["pid"], info["pid"])
                self.assertIn(info["pid"], self.pids)

    def test_every_client_snippet_runs_as_written(self):
        clients = snippets("client")
        self.assertGreaterEqual(len(clients), 2)
        env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
        for code in clients:
            self.assertIn("7400", code)
            run = subprocess.run(["/usr/bin/python3", "-c", code.replace("7400", str(self.port))],
                                 capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
            self.assertEqual(run.returncode, 0, "%s\n%s\n%s" % (code, run.stderr,
                                                                self.node.read_log()[-2000:]))


if __name__ == "__main__":
    unittest.main()
