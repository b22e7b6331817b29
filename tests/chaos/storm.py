#!/usr/bin/env python3
"""pyvisor's storm level: kill workers faster than restart intensity allows.

Starts pyvisor-node (separate process, free loopback port) with its default
intensity and pool-restart settings and `size` workers, then:

1. Probing: `clients` threads send, in turn, `ping` and an idempotent
   `execute echo`, recording every answer with its time.
2. Storm: a worker (one of the node's Python children) is SIGKILLed every
   `interval` seconds for `duration` seconds: the pool gives up, the node
   restarts it with back-off, the storm kills the new one too.
3. Calm: no more kills; the probes go on until the node serves again.

Pass criteria: the pool gave up at least once (stats pool_restarts >= 1); the
node serves again (ping "pong" and a successful execute) within `back_within`
seconds of the last kill; no probe ever got "pong" while the pool could not
serve (a "pong" followed, on the same connection, by an execute that failed
with `unavailable`, twice in a row: one such pair is the race of a give-up
between the two calls); every error is one of the documented codes (never
CAF's own text); no Python process outlives the node; SIGTERM exits 0.

    python3 tests/chaos/storm.py --node build/pyvisor-node [--json storm.json]
"""

import argparse
import configparser
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chaos import ROOT, Rpc, alive, descendants_of, workers_of  # noqa: E402

CODES = {"bad_request", "unknown_command", "python_error", "worker_crashed", "timeout",
         "session_expired", "session_lost", "overloaded", "shutting_down", "protocol_error",
         "unknown_method", "unavailable"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--level", default="storm")
    ap.add_argument("--node", default=os.path.join(ROOT, "build", "pyvisor-node"))
    ap.add_argument("--json", help="write the report as JSON to this file")
    opts = ap.parse_args()
    cfg = configparser.ConfigParser(inline_comment_prefixes=(";",))
    cfg.read(os.path.join(ROOT, "configs", "chaos-%s.ini" % opts.level))

    tmp = tempfile.TemporaryDirectory()
    ini = os.path.join(tmp.name, "node.ini")
    with open(ini, "w") as f:
        f.write('[pool]\nsize=%s\nshutdown-timeout=2s\n[rpc]\nport=0\n[log]\nlevel="warn"\n'
                % cfg["node"]["size"])
    log = open(os.path.join(tmp.name, "node.log"), "w+")
    node = subprocess.Popen([opts.node, "--config-file=" + ini], stdout=subprocess.PIPE,
                            stderr=log, text=True)
    seen = set()
    failures = []
    report = {}
    try:
        line = node.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError("node did not start: %r" % line)
        port = int(line.strip().rsplit(":", 1)[1])
        probes = []  # (t, client, ping_ok, exec_code or None)
        lock = threading.Lock()
        stop = threading.Event()

        def prober(n):
            rpc = Rpc(port, 30)
            i = 0
            try:
                while not stop.is_set():
                    i += 1
                    t = time.time()
                    perr, pres = rpc.call("ping", [])
                    eerr, eres = rpc.call("execute", ["echo", [n, i],
                                                      {"idempotent": True, "timeout_ms": 5000}])
                    ecode = None if eerr is None and eres == [n, i] else (eerr or {}).get(
                        "code", "wrong_result")
                    with lock:
                        probes.append((t, n, perr is None and pres == "pong", ecode,
                                       perr, eerr))
                    time.sleep(0.005)
            finally:
                rpc.close()

        threads = [threading.Thread(target=prober, args=(n,))
                   for n in range(int(cfg["load"]["clients"]))]
        for t in threads:
            t.start()
        time.sleep(0.5)
        interval = float(cfg["storm"]["interval"])
        duration = float(cfg["storm"]["duration"])
        rng = random.Random(1)
        kills = 0
        t_start = time.time()
        last_kill = t_start
        while time.time() - t_start < duration:
            seen.update(descendants_of(node.pid))
            kids = workers_of(node.pid)  # the fork-server template among them
            if kids:
                try:
                    os.kill(rng.choice(kids), signal.SIGKILL)
                    kills += 1
                    last_kill = time.time()
                except ProcessLookupError:
                    pass
            time.sleep(interval)
        # Calm: wait until a probe shows the node serving again.
        back_within = float(cfg["criteria"]["back_within"])
        back_at = None
        while time.time() - last_kill < back_within + 5:
            seen.update(descendants_of(node.pid))
            with lock:
                after = [p for p in probes if p[0] > last_kill and p[2] and p[3] is None]
            if after:
                back_at = after[0][0]
                break
            time.sleep(0.02)
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join(30)
        seen.update(descendants_of(node.pid))
        stats_rpc = Rpc(port, 10)
        err, stats = stats_rpc.call("stats", [])
        stats_rpc.close()

        # Criteria.
        if stats["pool_restarts"] < 1:
            failures.append("the storm never made the pool give up (pool_restarts=0): "
                            "the level does not test escalation")
        back = None if back_at is None else back_at - last_kill
        if back is None or back > back_within:
            failures.append("not serving again within %.1f s of the last kill (took %s)"
                            % (back_within, "never" if back is None else "%.2f s" % back))
        by_client = {}
        for p in probes:
            by_client.setdefault(p[1], []).append(p)
        lies = 0
        for ps in by_client.values():
            for a, b in zip(ps, ps[1:]):
                if a[2] and a[3] == "unavailable" and b[2] and b[3] == "unavailable":
                    lies += 1
        if lies:
            failures.append("ping said pong while execute answered unavailable (%d times in a "
                            "row)" % lies)
        bad_codes = set()
        for p in probes:
            for e in (p[4], p[5]):
                if e is not None and (e.get("code") not in CODES
                                      or "system_error" in e.get("message", "")):
                    bad_codes.add((e.get("code"), e.get("message", "")[:80]))
        if bad_codes:
            failures.append("undocumented errors reached a client: %r" % sorted(bad_codes))
        unavailable = sum(1 for p in probes if p[3] == "unavailable")
        report = {"kills": kills, "probes": len(probes), "pool_restarts": stats["pool_restarts"],
                  "serving_again_after_s": back, "unavailable_answers": unavailable,
                  "pong_while_unavailable": lies, "state": stats["state"]}
    except Exception as exc:  # noqa: BLE001
        failures.append("harness error: %r" % exc)
    finally:
        if node.poll() is None:
            node.send_signal(signal.SIGTERM)
        try:
            code = node.wait(30)
        except subprocess.TimeoutExpired:
            node.kill()
            code = node.wait()
        if code != 0:
            failures.append("node exit status %s after SIGTERM" % code)
        deadline = time.time() + 5
        while time.time() < deadline and any(alive(p) for p in seen):
            time.sleep(0.05)
        left = [p for p in seen if alive(p)]
        if left:
            failures.append("Python processes outlived the node: %r" % left)
        report["leftover_processes"] = len(left)
        report["failures"] = failures
        log.seek(0)
        tail = log.read()[-3000:]
        log.close()
        tmp.cleanup()
    print("storm: %s" % json.dumps(report, sort_keys=True))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(report, f, indent=2, sort_keys=True)
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        print("node log tail:\n" + tail)
        return 1
    print("storm: all criteria met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
