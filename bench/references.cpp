#include "bench/references.hpp"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <sstream>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <stdexcept>

#include <msgpack.hpp>

namespace pyvisor::bench {

namespace {

// The minimal Python side of the raw floor: read a frame, write it back.
const char* echo_loop = R"(import os, struct
r, w = 3, 4
def rd(n):
    b = b''
    while len(b) < n:
        c = os.read(r, n - len(b))
        if not c:
            raise SystemExit(0)
        b += c
    return b
while True:
    h = rd(4)
    (n,) = struct.unpack('>I', h)
    body = rd(n)
    os.write(w, h + body)
)";

void read_exact(int fd, char* p, size_t n) {
  while (n > 0) {
    auto r = read(fd, p, n);
    if (r <= 0)
      throw std::runtime_error("raw floor: child closed its pipe");
    p += r;
    n -= static_cast<size_t>(r);
  }
}

void write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    auto w = write(fd, p, n);
    if (w <= 0)
      throw std::runtime_error("write failed");
    p += w;
    n -= static_cast<size_t>(w);
  }
}

} // namespace

double now_us() {
  return std::chrono::duration<double, std::micro>(
           std::chrono::steady_clock::now().time_since_epoch())
    .count();
}

namespace {

/// Keeps `window` requests outstanding until `count` were answered; returns
/// answers per second.
template <class Send, class Receive>
double run_window(size_t count, size_t window, Send send, Receive receive) {
  auto t = now_us();
  size_t sent = 0;
  size_t received = 0;
  while (received < count) {
    while (sent < count && sent - received < window) {
      send();
      ++sent;
    }
    receive();
    ++received;
  }
  return static_cast<double>(count) / ((now_us() - t) / 1e6);
}

} // namespace

latency summarize(std::vector<double> s) {
  latency result;
  if (s.empty())
    return result;
  std::sort(s.begin(), s.end());
  result.p50 = s[(s.size() - 1) / 2];
  result.p99 = s[static_cast<size_t>(0.99 * static_cast<double>(s.size() - 1))];
  return result;
}

pipe_floor::pipe_floor(const std::string& python, kind k, const std::string& python_dir)
  : kind_(k) {
  int in[2];
  int out[2];
  if (pipe(in) != 0 || pipe(out) != 0)
    throw std::runtime_error("pipe failed");
  auto pythonpath = "PYTHONPATH=" + python_dir;
  auto t0 = now_us();
  pid_ = fork();
  if (pid_ == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    dup2(in[0], 3);
    dup2(out[1], 4);
    if (k == kind::raw) {
      execl(python.c_str(), python.c_str(), "-c", echo_loop, static_cast<char*>(nullptr));
    } else {
      putenv(pythonpath.data());
      execl(python.c_str(), python.c_str(), "-m", "pyvisor.worker", "--in-fd", "3", "--out-fd",
            "4", static_cast<char*>(nullptr));
    }
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  to_child_ = in[1];
  from_child_ = out[0];
  std::vector<char> first{'x'};
  if (k == kind::raw)
    write_frame(first);
  read_frame(first); // the worker's hello
  first_reply_us_ = now_us() - t0;
}

pipe_floor::~pipe_floor() {
  close(to_child_);
  close(from_child_);
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
}

const std::vector<char>& pipe_floor::body(size_t payload) {
  // The payload bytes are made once per size, outside the timed requests.
  if (fill_.size() != payload)
    fill_.assign(payload, 'x');
  if (kind_ == kind::raw)
    return fill_;
  // {id, cmd: "echo", args: bin, session: nil}, as the node encodes it.
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk{buf};
  pk.pack_map(4);
  pk.pack("id");
  pk.pack_uint64(next_id_++);
  pk.pack("cmd");
  pk.pack("echo");
  pk.pack("args");
  pk.pack_bin(static_cast<uint32_t>(payload));
  pk.pack_bin_body(fill_.data(), static_cast<uint32_t>(payload));
  pk.pack("session");
  pk.pack_nil();
  body_.assign(buf.data(), buf.data() + buf.size());
  return body_;
}

void pipe_floor::write_frame(const std::vector<char>& body) {
  uint32_t n = htonl(static_cast<uint32_t>(body.size()));
  std::vector<char> buf(4 + body.size());
  std::memcpy(buf.data(), &n, 4);
  std::memcpy(buf.data() + 4, body.data(), body.size());
  write_all(to_child_, buf.data(), buf.size());
}

void pipe_floor::read_frame(std::vector<char>& body) {
  uint32_t n;
  read_exact(from_child_, reinterpret_cast<char*>(&n), 4);
  body.resize(ntohl(n));
  read_exact(from_child_, body.data(), body.size());
}

latency pipe_floor::rtt(size_t payload, size_t count) {
  std::vector<char> back;
  std::vector<double> samples;
  samples.reserve(count);
  for (size_t i = 0; i < count + 5; ++i) {
    auto t = now_us();
    write_frame(body(payload));
    read_frame(back);
    if (i >= 5) // warm-up, as for the API
      samples.push_back(now_us() - t);
  }
  return summarize(std::move(samples));
}

double voluntary_switches() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_nvcsw);
}

std::map<std::string, double> voluntary_switches_by_thread() {
  std::map<std::string, double> result;
  auto* dir = opendir("/proc/self/task");
  if (dir == nullptr)
    return result;
  while (auto* e = readdir(dir)) {
    if (e->d_name[0] == '.')
      continue;
    std::ifstream status{std::string{"/proc/self/task/"} + e->d_name + "/status"};
    std::string line;
    std::string name;
    double count = 0;
    while (std::getline(status, line)) {
      if (line.rfind("Name:", 0) == 0)
        name = line.substr(line.find_first_not_of(" \t", 5));
      else if (line.rfind("voluntary_ctxt_switches:", 0) == 0)
        count = std::atof(line.c_str() + 24);
    }
    result[name] += count;
  }
  closedir(dir);
  return result;
}

double pipe_floor::throughput(size_t payload, size_t count, size_t window) {
  std::vector<char> back;
  return run_window(count, window, [&] { write_frame(body(payload)); },
                    [&] { read_frame(back); });
}

latency python_client_rtt(const std::string& python, const std::string& script,
                          const std::string& python_dir, uint16_t port, size_t payload,
                          size_t count, size_t warmup, const std::string& cafile) {
  auto cmd = "PYTHONPATH=" + python_dir + " " + python + " " + script + " " + std::to_string(port)
             + " " + std::to_string(payload) + " " + std::to_string(count) + " "
             + std::to_string(warmup) + (cafile.empty() ? "" : " " + cafile);
  auto f = popen(cmd.c_str(), "r");
  if (f == nullptr)
    throw std::runtime_error("cannot run " + cmd);
  latency result;
  auto n = fscanf(f, "%lf %lf", &result.p50, &result.p99);
  if (pclose(f) != 0 || n != 2)
    throw std::runtime_error("failed: " + cmd);
  return result;
}

ppe_figures run_ppe(const std::string& python, const std::string& script,
                    const std::vector<size_t>& payloads, size_t rtt_count,
                    const std::vector<size_t>& workers, size_t tp_count, size_t tp_payload) {
  ppe_figures result;
  auto join = [](const std::vector<size_t>& xs) {
    std::string s;
    for (auto x : xs)
      s += (s.empty() ? "" : ",") + std::to_string(x);
    return s;
  };
  auto cmd = python + " " + script + " " + join(payloads) + " " + std::to_string(rtt_count) + " "
             + join(workers) + " " + std::to_string(tp_count) + " " + std::to_string(tp_payload);
  auto f = popen(cmd.c_str(), "r");
  if (f == nullptr) {
    result.error = "cannot run " + cmd;
    return result;
  }
  std::string out;
  char buf[4096];
  while (auto n = fread(buf, 1, sizeof(buf), f))
    out.append(buf, n);
  if (pclose(f) != 0) {
    result.error = "ppe_reference.py failed";
    return result;
  }
  // The script prints JSON; msgpack-c has no JSON reader, and the shape is
  // fixed, so pick the numbers out by key.
  auto number_after = [&](const std::string& key, size_t from, size_t& pos) {
    pos = out.find(key, from);
    if (pos == std::string::npos)
      throw std::runtime_error("ppe output lacks " + key);
    pos += key.size();
    while (pos < out.size() && (out[pos] == '"' || out[pos] == ':' || out[pos] == ' '))
      ++pos;
    size_t end = pos;
    double v = std::stod(out.substr(pos), &end);
    pos += end;
    return v;
  };
  try {
    size_t pos = 0;
    result.startup_us = number_after("\"startup_us\"", 0, pos);
    pos = out.find("\"rtt\"");
    for (size_t i = 0; i < payloads.size(); ++i) {
      latency l;
      l.p50 = number_after("\"p50\"", pos, pos);
      l.p99 = number_after("\"p99\"", pos, pos);
      result.rtt.push_back(l);
    }
    pos = out.find("\"throughput\"");
    pos = out.find('[', pos) + 1;
    for (size_t i = 0; i < workers.size(); ++i) {
      size_t end = 0;
      result.throughput.push_back(std::stod(out.substr(pos), &end));
      pos += end;
      if (pos < out.size() && out[pos] == ',')
        ++pos;
      while (pos < out.size() && out[pos] == ' ')
        ++pos;
    }
    result.ok = true;
  } catch (const std::exception& e) {
    result.error = e.what();
  }
  return result;
}

rpc_client::rpc_client(uint16_t port) {
  fd_ = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0)
    throw std::runtime_error("cannot connect to the RPC endpoint");
  int one = 1;
  setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

rpc_client::~rpc_client() {
  if (fd_ >= 0)
    close(fd_);
}

void rpc_client::send_echo_head(msgpack::sbuffer& buf) {
  msgpack::packer<msgpack::sbuffer> pk{buf};
  pk.pack_array(4);
  pk.pack(0);
  pk.pack(next_id_++);
  pk.pack(std::string{"execute"});
  pk.pack_array(2);
  pk.pack(std::string{"echo"});
}

void rpc_client::send_echo(const std::vector<char>& payload) {
  msgpack::sbuffer buf;
  send_echo_head(buf);
  msgpack::packer<msgpack::sbuffer>{buf}.pack(payload);
  write_all(fd_, buf.data(), buf.size());
}

msgpack::object_handle rpc_client::read_response() {
  msgpack::object_handle oh;
  while (!unpacker_.next(oh)) {
    unpacker_.reserve_buffer(65536);
    auto n = read(fd_, unpacker_.buffer(), unpacker_.buffer_capacity());
    if (n <= 0)
      throw std::runtime_error("rpc connection closed");
    unpacker_.buffer_consumed(static_cast<size_t>(n));
  }
  const auto& msg = oh.get();
  if (msg.type != msgpack::type::ARRAY || msg.via.array.size != 4)
    throw std::runtime_error("not an RPC response");
  if (msg.via.array.ptr[2].type != msgpack::type::NIL)
    throw std::runtime_error("rpc error response: "
                             + msgpack::object(msg.via.array.ptr[2]).as<std::map<std::string,
                                                                               std::string>>()
                                 .at("message"));
  return oh;
}

void rpc_client::echo(const std::vector<char>& payload) {
  send_echo(payload);
  read_response();
}

msgpack::object_handle rpc_client::echo_packed(const std::vector<char>& arg) {
  msgpack::sbuffer buf;
  send_echo_head(buf);
  write_all(fd_, buf.data(), buf.size());
  write_all(fd_, arg.data(), arg.size());
  return read_response();
}

node_process::node_process(const std::string& node, const std::string& python,
                           const std::string& ini) {
  char dir[] = "/tmp/pyvisor-bench-XXXXXX";
  if (mkdtemp(dir) == nullptr)
    throw std::runtime_error("cannot create a temporary directory");
  dir_ = dir;
  auto path = dir_ + "/node.ini";
  {
    std::ofstream out{path};
    out << "[log]\nlevel=\"warn\"\n[pool]\npython=\"" << python << "\"\n" << ini << "\n";
  }
  int out[2];
  if (pipe(out) != 0)
    throw std::runtime_error("cannot create a pipe");
  pid_ = fork();
  if (pid_ == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    dup2(out[1], 1);
    close(out[0]);
    close(out[1]);
    auto arg = "--config-file=" + path;
    execl(node.c_str(), node.c_str(), arg.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  close(out[1]);
  std::string line;
  char c;
  while (read(out[0], &c, 1) == 1 && c != '\n')
    line += c;
  close(out[0]);
  auto colon = line.rfind(':');
  if (line.find("listening on") == std::string::npos || colon == std::string::npos) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    throw std::runtime_error("pyvisor-node did not start (" + node + ")");
  }
  port_ = static_cast<uint16_t>(std::stoi(line.substr(colon + 1)));
}

node_process::~node_process() {
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    for (int i = 0; i < 200; ++i) {
      if (waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;
        break;
      }
      usleep(50000);
    }
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  std::remove((dir_ + "/node.ini").c_str());
  rmdir(dir_.c_str());
}

double node_process::cpu_seconds() const {
  std::ifstream in{"/proc/" + std::to_string(pid_) + "/stat"};
  std::string stat{std::istreambuf_iterator<char>{in}, std::istreambuf_iterator<char>{}};
  std::istringstream rest{stat.substr(stat.rfind(')') + 2)};
  std::string field;
  double ticks = 0;
  // Fields after the command: state is 3, utime 14, stime 15 (1-based).
  for (int i = 3; i <= 15 && rest >> field; ++i)
    if (i >= 14)
      ticks += std::stod(field);
  return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

double rpc_client::pipelined(const std::vector<char>& payload, size_t count, size_t window) {
  return run_window(count, window, [&] { send_echo(payload); }, [&] { read_response(); });
}

} // namespace pyvisor::bench
