"""Sequential round trips of pyvisor's own Python client, for pyvisor-bench:
what a Python program calling a node over one connection sees.

    python_client_rtt.py PORT PAYLOAD COUNT [WARMUP [CAFILE]]

Sends COUNT echo requests of PAYLOAD bytes (a str below 1 MiB, bytes from
1 MiB: what a program sends such data as) one after the other through
pyvisor.client.Client (after WARMUP, 20 by default, for warm-up) and prints
the p50 and p99 in microseconds as "p50 p99". With CAFILE, over TLS to
"localhost", trusting that CA.
"""

import ssl
import sys
import time

from pyvisor.client import Client


def main():
    port, payload, count = (int(x) for x in sys.argv[1:4])
    warmup = int(sys.argv[4]) if len(sys.argv) > 4 else 20
    data = "x" * payload if payload < (1 << 20) else b"x" * payload
    if len(sys.argv) > 5:
        ctx = ssl.create_default_context(cafile=sys.argv[5])
        client = Client("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
    else:
        client = Client("127.0.0.1", port)
    samples = []
    for i in range(count + warmup):
        t = time.perf_counter()
        client.execute("echo", data)
        if i >= warmup:
            samples.append((time.perf_counter() - t) * 1e6)
    samples.sort()
    print(samples[(len(samples) - 1) // 2], samples[min(len(samples) - 1, int(0.99 * (len(samples) - 1)))])


if __name__ == "__main__":
    sys.exit(main())
