"""The fork-server template: imports once, then forks ready workers.

Started by the node (``pool.start-method = fork-server``) as
``python3 -c "...pyvisor.forkserver.main()" --in-fd 3 --out-fd 4
--control-fd 5 [--module NAME ...]``. It imports msgpack, pyvisor and the
user modules once, freezes what they allocated (``gc.freeze()``: the
collector then never writes to those objects, so their pages stay shared
copy-on-write with every worker), says hello on fd 4 like a worker, and then
forks one worker per request on the control socket (fd 5, a SOCK_SEQPACKET
socketpair). docs/protocol.md, "Fork server", specifies the messages:

- node -> template, on fd 5: ``{"id": n}`` with four descriptors attached
  (SCM_RIGHTS): the worker's request pipe (read end), reply pipe (write
  end), stdout and stderr pipes (write ends); a fifth, its control socket,
  and a sixth and seventh, its shared rings (to and from the node), when
  it has them. They become the worker's fds 3, 4, 1, 2, 5, 6 and 7.
- template -> node, on fd 5: ``{"id": n, "pid": p}`` with a pidfd of the
  worker attached, or ``{"id": n, "error": text}``.
- template -> node, on fd 4: a reply frame with id 0 whenever a worker
  exits: ``{"id": 0, "ok": true, "result": {"pid", "code", "signal"}}``
  (the template is the workers' parent and reaps them).
- EOF on fd 3 or fd 5: the node is done; the template kills what is left of
  its workers and exits.

A forked worker is a worker like a spawned one: its own process group and
guard, SIGKILL when the template dies (parent-death signal), fds 0-4 as
a spawned worker has them, ``random`` reseeded, the on_start hooks, then the
hello and requests. Modules must leave the template single-threaded: a
module that starts a thread at import fails start-up with a message naming
it (threads do not survive a fork, and locks they held stay locked).
"""

import os
import sys

EXIT_THREADS = 6


def _threads():
    """OS threads of this process (C extensions' too, not only Python's)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


def _parse_args(argv):
    opts = {"in_fd": 3, "out_fd": 4, "control_fd": 5, "module": []}
    it = iter(argv)
    for arg in it:
        value = next(it, None)
        if value is None:
            raise SystemExit("pyvisor.forkserver: %s needs a value" % arg)
        if arg in ("--in-fd", "--out-fd", "--control-fd"):
            opts[arg[2:].replace("-", "_")] = int(value)
        elif arg == "--module":
            opts["module"].append(value)
        else:
            raise SystemExit("pyvisor.forkserver: unknown argument %s" % arg)
    return opts


class ThreadsAtImport(Exception):
    pass


def main(argv=None):
    opts = _parse_args(sys.argv[1:] if argv is None else argv)
    # Exits with 3 and a clear message when msgpack is missing, as a worker.
    from pyvisor import worker as w

    import gc

    # Like a worker's: what a module starts at import (a subprocess) stays
    # in the template's group and dies with the template, however it ends.
    w.guard_process_group()
    w.route_logging()  # the forked workers inherit it
    node = w.Worker(opts["in_fd"], opts["out_fd"])
    for name in opts["module"]:
        if not w.import_user_module(node, name):
            return w.EXIT_IMPORT_FAILED
        n = _threads()
        if n > 1:
            msg = (
                "user module %r left %d threads running after its import; a fork-server "
                "template must stay single-threaded (a fork copies only the forking thread, "
                "and locks other threads held stay locked in every worker). Start the "
                "thread in a @pyvisor.on_start hook, which runs in each worker after the "
                "fork, or set pool.start-method = spawn" % (name, n))
            w.send_start_failure(node, ThreadsAtImport(msg), msg)
            return EXIT_THREADS
    import ctypes
    import fcntl  # noqa: F401  (imported here once, not in every worker)
    import random  # noqa: F401
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    gc.collect()
    gc.freeze()
    node.send({
        "hello": True,
        "pid": os.getpid(),
        "python": sys.version.split()[0],
        "commands": w.pyvisor.commands(),
    })
    return _Template(opts, node, libc, signal).serve()


# The control socket through _socket and array, as socket.send_fds and
# recv_fds do it: `import socket` would cost the template's start-up about
# 6 ms (enum, selectors) for two functions.

def _send_fds(sock, body, fds):
    import _socket
    import array

    anc = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    return sock.sendmsg([body], anc)


def _recv_fds(sock, bufsize, maxfds):
    import _socket
    import array

    fds = array.array("i")
    msg, anc, _, _ = sock.recvmsg(bufsize, _socket.CMSG_LEN(maxfds * fds.itemsize))
    for level, kind, data in anc:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - (len(data) % fds.itemsize)])
    return msg, list(fds)


class _Template:
    def __init__(self, opts, node, libc, signal):
        import _socket

        self.opts = opts
        self.node = node
        self.libc = libc
        self.signal = signal
        self.ctl = _socket.socket(fileno=opts["control_fd"])
        self.children = set()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)

    def serve(self):
        import select

        import msgpack

        poller = select.poll()
        for fd in (self.opts["in_fd"], self.ctl.fileno(), self.wake_r):
            poller.register(fd, select.POLLIN)
        try:
            while True:
                for fd, _ in poller.poll():
                    if fd == self.wake_r:
                        os.read(self.wake_r, 4096)
                        self.reap()
                    elif fd == self.ctl.fileno():
                        if not self.fork_one(msgpack):
                            return 0
                    elif not os.read(fd, 4096):
                        return 0  # EOF on fd 3: the node is done
        finally:
            for pid in list(self.children):
                try:
                    os.killpg(pid, 9)
                except OSError:
                    pass
            try:
                self.reap()
            except OSError:
                pass  # the node is gone: nobody to tell

    def reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)
            code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
            sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
            self.node.send({"id": 0, "ok": True,
                            "result": {"pid": pid, "code": code, "signal": sig}})

    def fork_one(self, msgpack):
        msg, fds = _recv_fds(self.ctl, 4096, 7)
        if not msg:
            return False  # the node closed the control socket
        try:
            rid = msgpack.unpackb(msg)["id"]
        except Exception:  # noqa: BLE001
            for fd in fds:
                os.close(fd)
            return True
        if len(fds) not in (4, 5, 7):
            for fd in fds:
                os.close(fd)
            self.reply(rid, error="expected 4, 5 or 7 descriptors, got %d" % len(fds))
            return True
        sys.stdout.flush()
        sys.stderr.flush()
        template = os.getpid()
        try:
            pid = os.fork()
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            self.reply(rid, error="fork failed: %s" % exc)
            return True
        if pid == 0:
            self.become_worker(template, fds)  # never returns
        for fd in fds:
            os.close(fd)
        self.children.add(pid)
        # The pidfd is opened before the child can be reaped (this loop
        # reaps), so it names this child and no recycled pid.
        pidfd = os.pidfd_open(pid)
        try:
            self.reply(rid, pid=pid, pidfd=pidfd)
        finally:
            os.close(pidfd)
        return True

    def reply(self, rid, pid=None, pidfd=None, error=None):
        import msgpack

        body = {"id": rid}
        if error is not None:
            body["error"] = error
        else:
            body["pid"] = pid
        _send_fds(self.ctl, msgpack.packb(body), [] if pidfd is None else [pidfd])

    def become_worker(self, template, fds):
        code = 1
        try:
            os.setpgid(0, 0)
            # Die with the template; catch a template that died already.
            self.libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
            if os.getppid() != template:
                os._exit(1)
            self.signal.set_wakeup_fd(-1)
            self.signal.signal(self.signal.SIGCHLD, self.signal.SIG_DFL)
            import fcntl

            devnull = os.open(os.devnull, os.O_RDONLY)
            req, rep, out, err = fds[:4]
            # Above the targets first: a descriptor may already sit at 0-5.
            moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
                     for fd in [devnull, out, err, req, rep] + fds[4:]]
            for target, fd in enumerate(moved):
                os.dup2(fd, target, inheritable=target < 3)
            control = 5 if len(fds) >= 5 else None
            os.closerange(len(moved), 1 << 16)
            import random

            random.seed()
            from pyvisor import worker as w

            w.guard_process_group()
            code = w.serve_imported(w.Worker(3, 4, control))
        except BaseException:  # noqa: BLE001
            import traceback

            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
