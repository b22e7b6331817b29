#!/usr/bin/env python3
"""pyvisor's chaos harness: real faults against a real node under load.

It starts pyvisor-node (as a separate process, on a free loopback port) with
the node settings of a level file (configs/chaos-<level>.ini), then:

1. Load: `concurrency` clients, started gradually over `ramp_up`, each making
   blocking MessagePack-RPC calls: stateless idempotent echo calls, session
   calls (put, then get and compare, on a session of its own), slow
   idempotent sleep calls and, with `cancel_share`, cancelled calls: a sleep
   or spin with a random deadline, cancelled (a notification) after a random
   delay, or not; any answer counts, but exactly one.
2. Faults, one every `interval` seconds while the load runs, each kind in
   turn, all against real OS processes (pids from the node's stats and from
   /proc): kill1 (SIGKILL a worker), killN (SIGKILL two), stop (SIGSTOP a
   worker for stop_ms, longer than the request timeout, then SIGCONT),
   garbage (a worker writes an invalid frame), startup_kill (SIGKILL a worker,
   then SIGKILL its replacement while it starts up), slow (long sleeps occupy
   workers), burst (twice the queue bound at once), disconnect (a client
   vanishes mid-request).
3. Verification after the last fault: the pool must be back at full strength
   within `full_strength_within` seconds, then every operation must succeed.
4. SIGTERM: the node must exit 0 and no Python process may be left.

Every operation ends ok, failed (with its error code) or lost (no reply by
its deadline). Pass criteria (light and medium): lost = 0; every request
answered exactly once (no duplicate or unknown msgid); leftover Python
processes = 0; idempotent stateless operations >= 99 % ok during faults;
session operations fail only with session_lost / session_expired / timeout
(a SIGSTOPped owner makes its session's requests too slow: they answer
timeout, and the owner is killed only after pool.interrupt-grace), and
session_lost only for sessions whose worker really died; verification 100 %
ok and full strength in time; node exit status 0. The report is printed as a
table and written as JSON (--json). Exit status 0 when all criteria hold.

    python3 tests/chaos/chaos.py --level light --node build/pyvisor-node --json chaos.json
"""

import argparse
import configparser
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import msgpack

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


# -- a minimal RPC client (shares no code with the node) --------------------------

class Rpc:
    def __init__(self, port, timeout):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self.msgid = 0
        self.unanswered = set()
        self.duplicates = 0

    def notify(self, method, params):
        self.sock.sendall(msgpack.packb([2, method, params], use_bin_type=True))

    def send(self, method, params):
        self.msgid += 1
        self.sock.sendall(msgpack.packb([0, self.msgid, method, params], use_bin_type=True))
        self.unanswered.add(self.msgid)
        return self.msgid

    def read(self):
        while True:
            for msg in self.unpacker:
                if msg[1] in self.unanswered:
                    self.unanswered.discard(msg[1])
                else:
                    self.duplicates += 1  # answered twice, or never asked
                return msg[1], msg[2], msg[3]
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionError("connection closed by the node")
            self.unpacker.feed(data)

    def call(self, method, params):
        msgid = self.send(method, params)
        while True:
            i, err, res = self.read()
            if i == msgid:
                return err, res

    def close(self, chaos=None):
        if chaos is not None and self.duplicates:
            chaos.record("answers", time.time(), "failed", "answered_twice",
                         "%d replies to msgids not waiting" % self.duplicates)
        try:
            self.sock.close()
        except OSError:
            pass


# -- processes ----------------------------------------------------------------------

def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def parents():
    """pid -> ppid of every live (not zombie) process."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if fields[0] not in ("Z", "X"):
                out[int(name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            pass
    return out


def descendants_of(root):
    """Every live process below `root`: with the fork-server start method the
    workers are the template's children, and each worker has a guard."""
    table = parents()
    found, frontier = set(), {root}
    while frontier:
        frontier = {p for p, pp in table.items() if pp in frontier and p not in found}
        found |= frontier
    return sorted(found)


def workers_of(node_pid):
    """Worker processes of a node, spawned (its children) or forked (its
    template's children), guards excluded."""
    table = parents()
    firsts = [p for p, pp in table.items() if pp == node_pid]
    return [p for p, pp in table.items() if pp in firsts or p in firsts]


def signal_pid(pid, sig):
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


# -- the run ------------------------------------------------------------------------

class Chaos:
    def __init__(self, level, node_bin):
        self.cfg = configparser.ConfigParser(inline_comment_prefixes=(";",))
        self.cfg.read(level)
        self.node_bin = node_bin
        self.lock = threading.Lock()
        self.ops = []          # dicts: cls, t0, t1, outcome, code, phase
        self.faults = []       # dicts: kind, t, pids, end
        self.samples = []      # (t, stats) from the monitor
        self.seen_pids = set()
        self.dead_pids = set()
        self.stop_load = threading.Event()
        self.stop_monitor = threading.Event()
        self.phase = "faults"

    # -- node ---------------------------------------------------------------------
    def start_node(self):
        n = self.cfg["node"]
        self.tmp = tempfile.TemporaryDirectory()
        ini = os.path.join(self.tmp.name, "node.ini")
        with open(ini, "w") as f:
            f.write("[pool]\nsize=%s\nmodules=[\"pyvisor.testing\"]\nrequest-timeout=%s\n"
                    "attempt-timeout=%s\nqueue-size=%s\nmax-in-flight=%s\nmax-restarts=%s\n"
                    "restart-period=%s\nshutdown-timeout=2s\nworker-concurrency=%s\n"
                    "[rpc]\nport=0\n[log]\nlevel=\"warn\"\n" % (
                        n["size"], n["request_timeout"], n["attempt_timeout"], n["queue_size"],
                        n["max_in_flight"], n["max_restarts"], n["restart_period"],
                        n.get("worker_concurrency", "1")))
        self.node_log = open(os.path.join(self.tmp.name, "node.log"), "w+")
        self.node = subprocess.Popen([self.node_bin, "--config-file=" + ini],
                                     stdout=subprocess.PIPE, stderr=self.node_log, text=True)
        line = self.node.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError("node did not start: " + line)
        self.port = int(line.strip().rsplit(":", 1)[1])
        self.size = int(n["size"])
        self.queue_size = int(n["queue_size"])

    def stats(self, rpc):
        err, res = rpc.call("stats", [])
        if err:
            raise RuntimeError("stats failed: %r" % err)
        return res

    # -- monitor: stats samples and every Python child ever seen -----------------
    def monitor(self):
        rpc = Rpc(self.port, 10)
        while not self.stop_monitor.is_set():
            t = time.time()
            try:
                st = self.stats(rpc)
            except Exception:
                st = None
            kids = descendants_of(self.node.pid)
            with self.lock:
                if st is not None:
                    self.samples.append((t, st))
                self.seen_pids.update(kids)
            time.sleep(0.02)
        rpc.close()

    def ready_pids(self):
        with self.lock:
            if not self.samples:
                return []
            st = self.samples[-1][1]
        return [w["pid"] for w in st["workers"] if w["state"] == "ready" and w["pid"]]

    # -- load -----------------------------------------------------------------------
    def record(self, cls, t0, outcome, code=None, detail=None):
        with self.lock:
            self.ops.append({"cls": cls, "t0": t0, "t1": time.time(), "outcome": outcome,
                             "code": code, "phase": self.phase, "detail": detail})

    def call_op(self, rpc, cls, method, params, deadline):
        """Runs one operation; returns (rpc, err, res) with rpc replaced on loss."""
        t0 = time.time()
        rpc.sock.settimeout(deadline)
        try:
            err, res = rpc.call(method, params)
        except socket.timeout:
            self.record(cls, t0, "lost", "no reply within %.1fs" % deadline)
            rpc.close(self)
            return Rpc(self.port, 30), "lost", None
        except (ConnectionError, OSError) as e:
            self.record(cls, t0, "failed", "connection", str(e))
            rpc.close(self)
            return Rpc(self.port, 30), {"code": "connection"}, None
        if err:
            self.record(cls, t0, "failed", err.get("code"), err.get("message"))
        else:
            self.record(cls, t0, "ok")
        return rpc, err, res

    def client(self, n, budget):
        rng = random.Random(n)
        rpc = Rpc(self.port, 30)
        load = self.cfg["load"]
        session_share = float(load["session_share"])
        slow_share = float(load["slow_share"])
        cancel_share = float(load.get("cancel_share", "0"))
        deadline = 20.0
        session, owner, expected, gen = None, None, 0, 0
        done = 0
        while not self.stop_load.is_set() and (budget is None or done < budget):
            done += 1
            r = rng.random()
            if r < session_share:
                if session is None:
                    gen += 1
                    session = "c%d-%d" % (n, gen)
                    expected = 0
                    rpc, err, res = self.call_op(rpc, "session", "execute",
                                                 ["worker.info", None, {"session": session}], deadline)
                    owner = res["pid"] if not err and res else None
                    if err:
                        self.check_session_failure(err, owner)
                        session = None
                    continue
                expected += 1
                rpc, err, _ = self.call_op(rpc, "session", "execute",
                                           ["session.put", {"key": "n", "value": expected},
                                            {"session": session}], deadline)
                if not err:
                    rpc, err, res = self.call_op(rpc, "session", "execute",
                                                 ["session.get", {"key": "n"}, {"session": session}],
                                                 deadline)
                    if not err and res != expected:
                        self.record("session", time.time(), "failed", "state_mismatch",
                                    "expected %r got %r" % (expected, res))
                if err:
                    self.check_session_failure(err, owner)
                    session = None
            elif r < session_share + slow_share:
                rpc, _, _ = self.call_op(rpc, "slow", "execute",
                                         ["sleep", {"ms": rng.randint(20, 120)}, {"idempotent": True}],
                                         deadline)
            elif r < session_share + slow_share + cancel_share:
                rpc = self.cancel_op(rpc, rng, deadline)
            else:
                value = [n, done, "x" * rng.randint(0, 64)]
                rpc, err, res = self.call_op(rpc, "idem", "execute",
                                             ["echo", value, {"idempotent": True}], deadline)
                if not err and err != "lost" and res != value:
                    self.record("idem", time.time(), "failed", "wrong_result", repr(res)[:80])
        rpc.close(self)

    def cancel_op(self, rpc, rng, deadline):
        """A sleep or spin with a random deadline, cancelled after a random
        delay (or not): ok, timeout and cancelled are all fine answers (and
        worker_crashed / protocol_error while workers are killed or write
        garbage, overloaded in a burst); it must come exactly once."""
        t0 = time.time()
        command = rng.choice(["sleep", "spin"])
        ms = rng.randint(5, 300)
        opts = {"timeout_ms": rng.randint(10, 400)}
        rpc.sock.settimeout(deadline)
        try:
            msgid = rpc.send("execute", [command, {"ms": ms}, opts])
            if rng.random() < 0.6:
                time.sleep(rng.random() * 0.15)
                rpc.notify("cancel", [msgid])
            while True:
                i, err, _ = rpc.read()
                if i == msgid:
                    break
        except socket.timeout:
            self.record("cancel", t0, "lost", "no reply within %.1fs" % deadline)
            rpc.close(self)
            return Rpc(self.port, 30)
        except (ConnectionError, OSError) as e:
            self.record("cancel", t0, "failed", "connection", str(e))
            rpc.close(self)
            return Rpc(self.port, 30)
        if err is None:
            self.record("cancel", t0, "ok")
        elif err.get("code") in ("timeout", "cancelled", "worker_crashed", "protocol_error",
                                 "overloaded"):
            self.record("cancel", t0, "ok", err.get("code"))
        else:
            self.record("cancel", t0, "failed", err.get("code"), err.get("message"))
        return rpc

    def check_session_failure(self, err, owner):
        """Session failures are allowed only as session_lost for a dead owner
        (or session_expired); anything else is recorded as a violation."""
        if err == "lost":
            return
        code = err.get("code")
        if code == "session_expired":
            return
        if code == "session_lost":
            time.sleep(0.05)
            if owner is None or not alive(owner):
                return
            self.record("session", time.time(), "failed", "session_lost_but_owner_alive",
                        "owner pid %s" % owner)

    # -- faults ---------------------------------------------------------------------
    def note_fault(self, kind, pids, t=None):
        with self.lock:
            self.faults.append({"kind": kind, "t": t or time.time(), "pids": list(pids),
                                "end": time.time()})

    def fault(self, kind, rng):
        pids = self.ready_pids()
        f = self.cfg["faults"]
        if kind in ("kill1", "killN", "stop", "startup_kill") and not pids:
            return
        if kind == "kill1":
            victim = rng.choice(pids)
            signal_pid(victim, signal.SIGKILL)
            self.dead_pids.add(victim)
            self.note_fault(kind, [victim])
        elif kind == "killN":
            victims = rng.sample(pids, min(2, len(pids)))
            for v in victims:
                signal_pid(v, signal.SIGKILL)
                self.dead_pids.add(v)
            self.note_fault(kind, victims)
        elif kind == "stop":
            victim = rng.choice(pids)
            t = time.time()
            signal_pid(victim, signal.SIGSTOP)
            time.sleep(int(f["stop_ms"]) / 1000.0)
            signal_pid(victim, signal.SIGCONT)
            self.note_fault(kind, [victim], t)
        elif kind == "garbage":
            rpc = Rpc(self.port, 20)
            t = time.time()
            err, _ = rpc.call("execute", ["garbage", None])
            rpc.close()
            self.note_fault(kind, [], t)
            with self.lock:
                self.ops.append({"cls": "fault", "t0": t, "t1": time.time(),
                                 "outcome": "failed" if err else "ok",
                                 "code": err.get("code") if err else None,
                                 "phase": self.phase, "detail": "garbage"})
        elif kind == "startup_kill":
            victim = rng.choice(pids)
            before = set(workers_of(self.node.pid))
            t = time.time()
            signal_pid(victim, signal.SIGKILL)
            self.dead_pids.add(victim)
            killed = [victim]
            deadline = time.time() + 3
            while time.time() < deadline:
                fresh = set(workers_of(self.node.pid)) - before - {victim}
                if fresh:
                    newborn = fresh.pop()
                    # Kill it only if it has not said hello yet.
                    if newborn not in self.ready_pids():
                        signal_pid(newborn, signal.SIGKILL)
                        self.dead_pids.add(newborn)
                        killed.append(newborn)
                    break
                time.sleep(0.001)
            self.note_fault(kind, killed, t)
        elif kind == "slow":
            t = time.time()
            threads = [threading.Thread(target=self.one_shot, args=("slow", "execute",
                       ["sleep", {"ms": 600}, {"idempotent": True}])) for _ in range(self.size)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            self.note_fault(kind, [], t)
        elif kind == "burst":
            t = time.time()
            rpc = Rpc(self.port, 30)
            n = self.queue_size * 2
            ids = [rpc.send("execute", ["echo", i, {"idempotent": True}]) for i in range(n)]
            got = 0
            try:
                while got < n:
                    i, err, _ = rpc.read()
                    got += 1
                    with self.lock:
                        self.ops.append({"cls": "burst", "t0": t, "t1": time.time(),
                                         "outcome": "failed" if err else "ok",
                                         "code": err.get("code") if err else None,
                                         "phase": self.phase, "detail": None})
            except socket.timeout:
                for _ in range(n - got):
                    self.record("burst", t, "lost", "no reply")
            rpc.close()
            self.note_fault(kind, [], t)
        elif kind == "disconnect":
            t = time.time()
            rpc = Rpc(self.port, 5)
            rpc.send("execute", ["sleep", {"ms": 300}])
            rpc.send("execute", ["echo", "bye"])
            rpc.close()
            self.note_fault(kind, [], t)

    def one_shot(self, cls, method, params):
        rpc = Rpc(self.port, 30)
        rpc, _, _ = self.call_op(rpc, cls, method, params, 20.0)
        rpc.close()

    def fault_loop(self, kinds, interval, rng):
        i = 0
        while not self.stop_load.is_set():
            time.sleep(interval * rng.uniform(0.7, 1.3))
            if self.stop_load.is_set():
                break
            self.fault(kinds[i % len(kinds)], rng)
            i += 1

    # -- phases -----------------------------------------------------------------------
    def run(self):
        load, f, verify = self.cfg["load"], self.cfg["faults"], self.cfg["verify"]
        rng = random.Random(7)
        self.start_node()
        mon = threading.Thread(target=self.monitor)
        mon.start()
        try:
            t_start = time.time()
            concurrency = int(load["concurrency"])
            budget = int(load["operations"]) // concurrency
            clients = []
            kinds = [k.strip() for k in f["kinds"].split(",")]
            faults = threading.Thread(target=self.fault_loop, args=(kinds, float(f["interval"]), rng))
            for n in range(concurrency):
                th = threading.Thread(target=self.client, args=(n, budget))
                th.start()
                clients.append(th)
                if n == 0:
                    faults.start()
                time.sleep(float(load["ramp_up"]) / concurrency)
            deadline = t_start + float(load["duration"])
            while time.time() < deadline and any(c.is_alive() for c in clients):
                time.sleep(0.1)
            self.stop_load.set()
            for c in clients:
                c.join(60)
            faults.join(60)
            t_last_fault = max((x["end"] for x in self.faults), default=time.time())
            # Full strength again?
            limit = float(verify["full_strength_within"])
            self.full_strength_after = None
            wait_until = time.time() + max(limit, 0) + 10
            while time.time() < wait_until:
                pids = self.ready_pids()
                if len(pids) == self.size and all(alive(p) for p in pids):
                    self.full_strength_after = time.time() - t_last_fault
                    break
                time.sleep(0.02)
            # Verification phase.
            self.phase = "verify"
            self.stop_load.clear()
            vclients = []
            vn = max(1, concurrency // 2)
            for n in range(vn):
                th = threading.Thread(target=self.client,
                                      args=(1000 + n, int(verify["operations"]) // vn))
                th.start()
                vclients.append(th)
            for c in vclients:
                c.join(120)
        finally:
            self.stop_monitor.set()
            mon.join(30)
            self.node.send_signal(signal.SIGTERM)
            try:
                self.exit_status = self.node.wait(30)
            except subprocess.TimeoutExpired:
                self.node.kill()
                self.exit_status = "hung"
            self.node.stdout.close()
            time.sleep(0.2)
            deadline = time.time() + 5
            while time.time() < deadline and any(alive(p) for p in self.seen_pids):
                time.sleep(0.05)
            self.leftover = sorted(p for p in self.seen_pids if alive(p))
            for p in self.leftover:
                signal_pid(p, signal.SIGKILL)

    # -- report -------------------------------------------------------------------------
    def recovery(self):
        """Per kill: time to full strength and to the first success on the
        replacement (from the monitor's stats samples)."""
        out = []
        for fault in self.faults:
            if fault["kind"] not in ("kill1", "killN", "startup_kill", "stop"):
                continue
            t = fault["t"]
            before = [s for s in self.samples if s[0] <= t]
            if not before or not fault["pids"]:
                continue
            slots = {w["pid"]: (w["id"], w["served"]) for w in before[-1][1]["workers"]}
            victim = fault["pids"][0]
            if victim not in slots:
                continue
            slot, served0 = slots[victim]
            full = first = None
            for ts, st in self.samples:
                if ts <= t:
                    continue
                ws = {w["id"]: w for w in st["workers"]}
                w = ws.get(slot)
                replaced = w and w["pid"] not in (0, victim) and w["state"] == "ready"
                if full is None and replaced and all(x["state"] == "ready" for x in st["workers"]):
                    full = ts - t
                if first is None and replaced and w["served"] > served0:
                    first = ts - t
                if full is not None and first is not None:
                    break
            out.append({"kind": fault["kind"], "pid": victim, "full_strength_s": full,
                        "first_success_s": first})
        return out

    def report(self):
        def in_window(op):
            w = float(self.cfg["faults"]["window"])
            return any(f["t"] <= op["t0"] <= f["end"] + w for f in self.faults)

        classes = {}
        for op in self.ops:
            key = (op["phase"], op["cls"])
            c = classes.setdefault(key, {"ok": 0, "failed": 0, "lost": 0, "codes": {}})
            c[op["outcome"]] += 1
            if op["outcome"] != "ok":
                c["codes"][op["code"]] = c["codes"].get(op["code"], 0) + 1

        def pct(xs, p):
            if not xs:
                return None
            xs = sorted(xs)
            return round(1000 * xs[min(len(xs) - 1, int(p * (len(xs) - 1)))], 2)

        lat_in = [o["t1"] - o["t0"] for o in self.ops
                  if o["outcome"] == "ok" and o["cls"] == "idem" and o["phase"] == "faults" and in_window(o)]
        lat_out = [o["t1"] - o["t0"] for o in self.ops
                   if o["outcome"] == "ok" and o["cls"] == "idem" and (o["phase"] != "faults" or not in_window(o))]
        restarts = self.samples[-1][1]["restarts"] if self.samples else None
        rec = self.recovery()
        idem = [o for o in self.ops if o["phase"] == "faults" and o["cls"] in ("idem", "slow")]
        idem_ok = sum(1 for o in idem if o["outcome"] == "ok")
        session_bad = [o for o in self.ops if o["cls"] == "session" and o["outcome"] == "failed"
                       and o["code"] not in ("session_lost", "session_expired", "timeout")]
        verify = [o for o in self.ops if o["phase"] == "verify"]
        lost = sum(1 for o in self.ops if o["outcome"] == "lost")
        twice = [o for o in self.ops if o["cls"] == "answers"]
        cancel_bad = [o for o in self.ops if o["cls"] == "cancel" and o["outcome"] == "failed"
                      and o["code"] != "connection"]
        limit = float(self.cfg["verify"]["full_strength_within"])
        criteria = {
            "lost == 0": lost == 0,
            "every request answered exactly once": not twice,
            "cancelled calls answered ok/timeout/cancelled": not cancel_bad,
            "leftover Python processes == 0": not self.leftover,
            "idempotent ok >= 99% during faults": bool(idem) and idem_ok >= 0.99 * len(idem),
            "session failures only session_lost/expired/timeout, lost only for dead owners":
                not session_bad,
            "verification 100% ok": bool(verify) and all(o["outcome"] == "ok" for o in verify),
            "full strength within %.1fs after the last fault" % limit:
                self.full_strength_after is not None and self.full_strength_after <= limit,
            "node exit status 0": self.exit_status == 0,
        }
        result = {
            "classes": {"%s/%s" % k: v for k, v in sorted(classes.items())},
            "faults": {k: sum(1 for f in self.faults if f["kind"] == k)
                       for k in sorted({f["kind"] for f in self.faults})},
            "idempotent_ok_ratio": (idem_ok / len(idem)) if idem else None,
            "latency_ms": {"in_fault_windows": {"p50": pct(lat_in, 0.5), "p99": pct(lat_in, 0.99)},
                           "outside": {"p50": pct(lat_out, 0.5), "p99": pct(lat_out, 0.99)}},
            "recovery": rec,
            "restarts_used": restarts,
            "restart_budget": "%s per %s" % (self.cfg["node"]["max_restarts"],
                                             self.cfg["node"]["restart_period"]),
            "full_strength_after_last_fault_s": self.full_strength_after,
            "leftover_python_processes": self.leftover,
            "python_processes_seen": len(self.seen_pids),
            "node_exit_status": self.exit_status,
            "session_violations": [{k: o[k] for k in ("code", "detail")} for o in session_bad][:20],
            "criteria": criteria,
            "passed": all(criteria.values()),
        }
        return result


def print_table(r):
    print("\n== pyvisor chaos report ==")
    print("%-18s %8s %8s %6s  %s" % ("phase/class", "ok", "failed", "lost", "failures by code"))
    for k, v in r["classes"].items():
        print("%-18s %8d %8d %6d  %s" % (k, v["ok"], v["failed"], v["lost"],
                                         ", ".join("%s=%d" % x for x in sorted(v["codes"].items(), key=str))))
    print("faults injected:   %s" % ", ".join("%s=%d" % x for x in r["faults"].items()))
    ratio = r["idempotent_ok_ratio"]
    print("idempotent ok:     %s" % ("%.3f%%" % (100 * ratio) if ratio is not None else "n/a"))
    lat = r["latency_ms"]
    print("latency ms (idem): in fault windows p50=%s p99=%s; outside p50=%s p99=%s" % (
        lat["in_fault_windows"]["p50"], lat["in_fault_windows"]["p99"],
        lat["outside"]["p50"], lat["outside"]["p99"]))
    full = [x["full_strength_s"] for x in r["recovery"] if x["full_strength_s"] is not None]
    first = [x["first_success_s"] for x in r["recovery"] if x["first_success_s"] is not None]
    if full:
        print("recovery:          to full strength median %.0f ms, max %.0f ms; to first success "
              "on the replacement median %s ms" % (
                  1000 * statistics.median(full), 1000 * max(full),
                  "%.0f" % (1000 * statistics.median(first)) if first else "n/a"))
    print("restarts used:     %s (budget %s)" % (r["restarts_used"], r["restart_budget"]))
    fs = r["full_strength_after_last_fault_s"]
    print("full strength:     %s after the last fault" % ("%.2fs" % fs if fs is not None else "never"))
    print("python processes:  %d seen, %d left over" % (r["python_processes_seen"],
                                                        len(r["leftover_python_processes"])))
    print("node exit status:  %s" % r["node_exit_status"])
    for name, ok in r["criteria"].items():
        print("  [%s] %s" % ("PASS" if ok else "FAIL", name))
    passed = sum(1 for ok in r["criteria"].values() if ok)
    print("%d passed, %d failed" % (passed, len(r["criteria"]) - passed))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--level", default="light",
                    help="light, medium, heavy or a path to a level file")
    ap.add_argument("--node", default=os.path.join(ROOT, "build", "pyvisor-node"))
    ap.add_argument("--json", help="write the report as JSON to this file")
    args = ap.parse_args()
    level = args.level
    if not os.path.exists(level):
        level = os.path.join(ROOT, "configs", "chaos-%s.ini" % level)
    chaos = Chaos(level, args.node)
    chaos.run()
    r = chaos.report()
    print_table(r)
    if not r["passed"]:
        # The node's warnings and errors: what it saw of the failure.
        chaos.node_log.flush()
        chaos.node_log.seek(0)
        lines = chaos.node_log.read().splitlines()
        print("\n== the node's log (last %d of %d lines, level warn) ==" % (min(80, len(lines)),
                                                                           len(lines)))
        print("\n".join(lines[-80:]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2, default=str)
    return 0 if r["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
