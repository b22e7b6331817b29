#!/usr/bin/env bash
# Proves that pyvisor composes into other CAF applications: installs the
# build into a temporary prefix, builds examples/ as a separate CMake project
# against the installed package (find_package(pyvisor)), and runs the
# examples (the README's among them), the remote one against an installed
# node that publishes its pool, and builds the README's C++ and CMake blocks
# (readme_fragments.py checks that each is one of the examples or builds it). Checks
# the installed systemd unit with systemd-analyze.
# Then moves the installation elsewhere and runs its node without help: its
# workers must import the moved copy of the Python package (not the source
# tree's, not the configure-time prefix's).
#   check_examples.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build_dir=$1
src_dir=$2
prefix=$(mktemp -d)
node_pid=
cleanup() {
  if [ -n "$node_pid" ]; then kill -9 "$node_pid" 2>/dev/null || true; fi
  rm -rf "$prefix" "$prefix.moved" "$prefix.apps"
}
trap cleanup EXIT
# Starts the installed node with ARGS, waits until it listens (it does once
# its workers are ready: on a loaded 2-core machine that took more than 10 s
# once), and says so when it does not.
start_node() {
  "$prefix/bin/pyvisor-node" --config-file="$prefix/share/pyvisor/configs/node.ini" \
    --rpc.port=0 --log.level='"warn"' "$@" > "$prefix/node.out" &
  node_pid=$!
  for _ in $(seq 600); do
    grep -q "listening on" "$prefix/node.out" 2>/dev/null && return 0
    kill -0 "$node_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "the installed node did not start listening ($(kill -0 "$node_pid" 2>/dev/null && echo still running || echo exited)); its stdout:"
  cat "$prefix/node.out"
  return 1
}
cmake --install "$build_dir" --prefix "$prefix" > /dev/null

# The installed systemd unit: valid (systemd-analyze verify also checks that
# ExecStart names an executable, i.e. the installed node) and hardened.
unit="$prefix/share/pyvisor/configs/pyvisor-node.service"
grep -q "^ExecStart=$prefix/bin/pyvisor-node " "$unit"
systemd-analyze verify "$unit"
exposure=$(systemd-analyze security --offline=true "$unit" | sed -n 's/.*Overall exposure level.*: \([0-9.]*\).*/\1/p')
echo "systemd unit: verified, exposure $exposure (at most 4.0 required)"
# --threshold is in tenths.
systemd-analyze security --offline=true --threshold=40 "$unit" > /dev/null
cmake -S "$src_dir/examples" -B "$prefix/build-examples" -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build "$prefix/build-examples" -j2
# Use the installed Python package, not the source tree's.
export PYVISOR_PYTHON_DIR="$prefix/share/pyvisor/python"
"$prefix/build-examples/test_with_mock"
"$prefix/build-examples/quick_start" "$src_dir/examples/python" | grep -q "^words: 2$"
"$prefix/build-examples/embedded_pool" "$src_dir/examples/python"
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
start_node --publish.port="$port"
remote_out=$("$prefix/build-examples/remote_pool" "127.0.0.1:$port")
grep -q "^1 nodes, echo -> hi$" <<< "$remote_out" || { echo "remote_pool said: $remote_out"; exit 1; }
kill -TERM "$node_pid"
wait "$node_pid"
node_pid=
echo "examples: all four built against the installed package and ran"

# The README's other C++ and CMake blocks: each is a file of examples/ (shown
# whole or in part) or a fragment that a harness builds as written, against
# the installation (tests/integration/examples/readme_fragments.py).
/usr/bin/python3 "$src_dir/tests/integration/examples/readme_fragments.py" "$src_dir" "$prefix/fragments"
cmake -S "$src_dir/tests/integration/examples/readme" -B "$prefix/build-readme" \
  -DCMAKE_PREFIX_PATH="$prefix" -DPYVISOR_README_FRAGMENTS="$prefix/fragments" > /dev/null
cmake --build "$prefix/build-readme" -j2
"$prefix/build-readme/mock_commands"
stream_out=$("$prefix/build-readme/stream")
[ "$stream_out" = $'hello\nstreaming\nworld\nwords: 3' ] || { echo "stream said: $stream_out"; exit 1; }
(cd "$prefix/build-readme" && ./app)
rm -rf "$prefix/build-readme"

# An application installed elsewhere than the package (here: built outside
# the prefix) finds the installation's Python package through the CMake
# package it was built against, before the source tree's.
unset PYVISOR_PYTHON_DIR
apps="$prefix.apps"
cmake -S "$src_dir/examples" -B "$apps" -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build "$apps" -j2 --target quick_start > /dev/null
"$apps/quick_start" "$src_dir/examples/python" 2> "$apps/stderr" | grep -q "^words: 2$"
grep -q "import the pyvisor package from $prefix/share/pyvisor/python" "$apps/stderr" \
  || { echo "the application did not use the installed package:"; cat "$apps/stderr"; exit 1; }
rm -rf "$apps"
echo "an application installed apart from the package found the package's Python directory"

unset PYVISOR_PYTHON_DIR
rm -rf "$prefix/build-examples"
mv "$prefix" "$prefix.moved"
prefix="$prefix.moved"
start_node
rpc_port=$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$prefix/node.out" | head -1)
PYTHONPATH="$prefix/share/pyvisor/python" /usr/bin/python3 - "$rpc_port" "$prefix" <<'PY'
import os, sys
from pyvisor.client import Client
port, prefix = int(sys.argv[1]), sys.argv[2]
c = Client("127.0.0.1", port)
assert c.call("ping") == "pong"
pid = c.execute("worker.info", None)["pid"]
env = open("/proc/%d/environ" % pid, "rb").read().split(b"\0")
path = [e for e in env if e.startswith(b"PYTHONPATH=")][0].decode()
assert prefix + "/share/pyvisor/python" in path, path
print("relocated node: workers import", prefix + "/share/pyvisor/python")
PY
kill -TERM "$node_pid"
wait "$node_pid"
node_pid=
