// The references pyvisor-bench measures itself against, in the same run:
// - pipe_floor raw: a minimal C++ parent and a minimal Python loop echoing
//   4-byte-length-prefixed frames over pipes (no msgpack, no actors): the
//   floor any Python bridge over pipes sits on.
// - pipe_floor worker: the same parent driving the real pyvisor Python
//   worker in protocol frames: what a request costs without the runtime.
// - ProcessPoolExecutor: Python's own process pool with the same interpreter,
//   worker count and payloads (bench/ppe_reference.py), the pool people use
//   instead.
// - rpc_client: a blocking MessagePack-RPC client for the node's endpoint.
// Nothing here uses CAF, so this translation unit compiles fast.

#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <msgpack.hpp>

namespace pyvisor::bench {

/// Latency figures in microseconds.
struct latency {
  double p50 = 0;
  double p99 = 0;
};

latency summarize(std::vector<double> samples_us);

/// One Python child answering frames over pipes, driven by the calling
/// thread with blocking reads and writes (no actors, no other thread):
/// - raw: a minimal loop echoing 4-byte-length-prefixed frames (no msgpack):
///   the floor any Python bridge over pipes sits on;
/// - worker: the real pyvisor worker (python -m pyvisor.worker), asked to
///   `echo` a bin payload in protocol frames: the floor of a pyvisor request,
///   Python side included, without the runtime around it.
class pipe_floor {
public:
  enum class kind { raw, worker };

  /// Spawns the child; measures the time to its first frame (raw: the echo
  /// of a first frame; worker: its hello). `python_dir` holds the pyvisor
  /// package (worker only).
  pipe_floor(const std::string& python, kind k, const std::string& python_dir = {});
  ~pipe_floor();

  /// Microseconds from spawn to the first frame.
  double first_reply_us() const {
    return first_reply_us_;
  }

  /// Sequential round trips of `payload` bytes.
  latency rtt(size_t payload, size_t count);

  /// Frames per second with `window` frames in flight.
  double throughput(size_t payload, size_t count, size_t window);

private:
  /// One request's frame body for `payload` bytes.
  const std::vector<char>& body(size_t payload);
  void write_frame(const std::vector<char>& body);
  void read_frame(std::vector<char>& body);

  kind kind_;
  int pid_ = -1;
  int to_child_ = -1;
  int from_child_ = -1;
  double first_reply_us_ = 0;
  uint64_t next_id_ = 1;
  /// `payload` bytes of 'x'.
  std::vector<char> fill_;
  std::vector<char> body_;
};

/// Voluntary context switches of this process so far (all threads): a
/// thread that blocks and is woken counts one. Their growth per request is
/// how many thread hand-offs a request costs on the calling side.
double voluntary_switches();

/// Voluntary context switches so far per thread name (threads of one name
/// summed; CAF 0.17 names both its scheduler threads and the middleman's
/// I/O thread "caf.multiplexer", the clock thread "caf.clock"; pyvisor's
/// process I/O threads are "pyvisor.io"). Threads that ended are missing.
std::map<std::string, double> voluntary_switches_by_thread();

/// Sequential echo round trips of pyvisor's Python client
/// (bench/python_client_rtt.py, run by `python` with the pyvisor package in
/// `python_dir`) against a gateway on 127.0.0.1:`port`, over TLS trusting
/// `cafile` when one is given. Throws on failure.
latency python_client_rtt(const std::string& python, const std::string& script,
                          const std::string& python_dir, uint16_t port, size_t payload,
                          size_t count, size_t warmup, const std::string& cafile = {});

/// Figures from bench/ppe_reference.py (ProcessPoolExecutor).
struct ppe_figures {
  double startup_us = 0;
  std::vector<latency> rtt;             // per payload size asked for
  std::vector<double> throughput;       // tasks/s per worker count asked for
  bool ok = false;
  std::string error;
};

ppe_figures run_ppe(const std::string& python, const std::string& script,
                    const std::vector<size_t>& payloads, size_t rtt_count,
                    const std::vector<size_t>& workers, size_t tp_count, size_t tp_payload);

/// A blocking MessagePack-RPC client (TCP, loopback). Reads replies with
/// msgpack-c's streaming unpacker, so a large reply costs the client linear
/// time too.
class rpc_client {
public:
  explicit rpc_client(uint16_t port);
  ~rpc_client();

  /// Sends execute("echo", bin(payload)) and waits for the reply.
  void echo(const std::vector<char>& payload);

  /// Sends execute("echo", arg) where `arg` is one msgpack value, and
  /// returns the reply's result.
  msgpack::object_handle echo_packed(const std::vector<char>& arg);

  /// Sends `count` echo requests with `window` outstanding; returns requests/s.
  double pipelined(const std::vector<char>& payload, size_t count, size_t window);

private:
  /// Packs [0, msgid, "execute", ["echo", - the argument follows.
  void send_echo_head(msgpack::sbuffer& buf);
  void send_echo(const std::vector<char>& payload);
  msgpack::object_handle read_response();

  int fd_ = -1;
  uint32_t next_id_ = 1;
  msgpack::unpacker unpacker_;
};

/// A pyvisor-node process, configured by `ini` (which continues the [pool]
/// section and must set rpc.port=0: the port is read from its stdout);
/// stopped (SIGTERM, then SIGKILL) when destroyed.
class node_process {
public:
  node_process(const std::string& node, const std::string& python, const std::string& ini);
  ~node_process();

  uint16_t port() const noexcept {
    return port_;
  }

  /// CPU seconds (user + system) the node process itself has used; its
  /// Python workers are separate processes and not included.
  double cpu_seconds() const;

private:
  pid_t pid_ = -1;
  uint16_t port_ = 0;
  std::string dir_;
};

/// Microseconds since an arbitrary steady epoch.
double now_us();

} // namespace pyvisor::bench
