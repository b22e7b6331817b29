"""Reference figures from Python's concurrent.futures.ProcessPoolExecutor,
for pyvisor-bench (run with the same interpreter the pool uses).

    ppe_reference.py PAYLOADS RTT_COUNT WORKERS TP_COUNT TP_PAYLOAD
    e.g. ppe_reference.py 64,4096 200 1,2,4 2000 64

Prints one JSON object: startup_us (4 workers, until the first result from
each), rtt (p50/p99 us per payload, sequential submit().result() on 1
worker), throughput (tasks/s per worker count, all submitted at once).
"""

import concurrent.futures as cf
import json
import sys
import time


def echo(x):
    return x


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * (len(xs) - 1)))]


def main():
    payloads = [int(x) for x in sys.argv[1].split(",")]
    rtt_count = int(sys.argv[2])
    workers = [int(x) for x in sys.argv[3].split(",")]
    tp_count = int(sys.argv[4])
    tp_payload = b"x" * int(sys.argv[5])
    out = {"rtt": [], "throughput": []}
    t0 = time.perf_counter()
    with cf.ProcessPoolExecutor(4) as ex:
        # Ready = each of the 4 processes has answered once.
        list(ex.map(echo, range(4)))
        out["startup_us"] = (time.perf_counter() - t0) * 1e6
    with cf.ProcessPoolExecutor(1) as ex:
        ex.submit(echo, 0).result()
        for size in payloads:
            data = b"x" * size
            samples = []
            for _ in range(rtt_count):
                t = time.perf_counter()
                ex.submit(echo, data).result()
                samples.append((time.perf_counter() - t) * 1e6)
            out["rtt"].append({"p50": pct(samples, 0.5), "p99": pct(samples, 0.99)})
    for n in workers:
        with cf.ProcessPoolExecutor(n) as ex:
            list(ex.map(echo, range(n * 4)))
            t = time.perf_counter()
            futures = [ex.submit(echo, tp_payload) for _ in range(tp_count)]
            for f in futures:
                f.result()
            out["throughput"].append(tp_count / (time.perf_counter() - t))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
