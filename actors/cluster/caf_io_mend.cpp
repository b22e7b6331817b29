// The caf-io mend (caf_io_mend.hpp says what it guarantees). Where CAF 0.17.6
// gives no hook, the program defines two functions that libcaf_io calls
// through its PLT, and the dynamic linker resolves those calls to the
// program's definitions first:
// - `accept` (libc), called from caf::policy::tcp::try_accept for every
//   doorman, plain and TLS: only calls from libcaf_io are changed (return
//   address checked), the rest pass through. CAF treats a failed accept
//   other than EAGAIN as an error it logs and forgets, so the listening
//   socket stays readable and its loop retries at once: 4.5 s of CPU per 5 s
//   measured once descriptors ran out. Here such a call drains the waiting
//   connection with a spare descriptor and answers EAGAIN; refused
//   connections are closed at once and answered EAGAIN too.
// - `caf::io::network::stream::configure_read`, through which every broker
//   (BASP's included) says how much its next read takes. BASP asks for
//   `exactly(payload_len)` of a header it has just read and the stream
//   resizes its buffer to that before reading: a forged 32-byte header made
//   the node allocate 1.25 GiB. Beyond the limit the connection is shut down
//   (SHUT_RDWR) and the read made small: CAF then reads the end of the
//   stream and closes the connection the usual way, on its own thread.
// The sweeping thread never closes a descriptor (CAF owns them): it shuts
// down a late connection's socket through a duplicate whose inode it checks
// first, so that a descriptor number CAF closed and reused meanwhile is
// never touched.
//
// Upstream (CAF 0.17 and later): a doorman should stop reading its socket on
// EMFILE (or drain it) rather than retry at once; a broker should be able to
// cap a connection's read size (basp_broker: a maximum payload_len checked
// in instance::handle before configure_read); a published port needs a
// connection limit and a handshake timeout (basp_broker creates a
// connection's context only at its first data, so a silent connection is
// never timed out, heartbeats or not).
#include "actors/cluster/caf_io_mend.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>

#include "caf/config.hpp"
#include "caf/io/network/stream.hpp"

#include "actors/cluster/interposition.hpp"
#include "messages/log.hpp"

static_assert(CAF_VERSION == 1706,
              "the caf-io mend interposes CAF 0.17.6's stream::configure_read: check that "
              "this CAF still calls it through its PLT and still allocates what it is told");

namespace pyvisor::caf_io_mend {
namespace {

using clock = std::chrono::steady_clock;

/// The mangled name of caf::io::network::stream::configure_read(config).
constexpr const char* configure_read_symbol =
  "_ZN3caf2io7network6stream14configure_readESt4pairINS0_19receive_policy_flagEmE";

/// A connection accepted on a guarded port.
struct tracked {
  ino_t inode = 0;
  uint16_t port = 0;
  clock::time_point deadline;
  /// exactly(n) reads BASP asked for: its header (1), the handshake's
  /// payload (2), the next header (3): the first message is complete.
  int exact_reads = 0;
  bool greeted = false;
  bool shut = false;
};

struct state {
  std::mutex mtx;
  std::unordered_map<uint16_t, listener_rules> rules;
  std::unordered_map<int, tracked> connections;
  /// Tracked connections that have not sent their first message yet (read
  /// without the lock on every configure_read: 0 is the common case).
  std::atomic<size_t> awaiting{0};
  std::atomic<size_t> max_message{0};
  std::string max_message_key = "publish.max-message-size";
  std::atomic<int> reserve_floor{INT_MAX};
  size_t reserve = 0;
  int spare = -1;
  bool sweeping = false;
  /// The process is exiting: the sweeper touches nothing any more (the
  /// logger may be destroyed).
  bool exiting = false;
  struct {
    std::atomic<uint64_t> max_connections{0}, descriptor_reserve{0}, no_descriptor{0},
      silent{0}, oversized{0};
  } counts;
  log_throttle full_warning, reserve_warning, empty_warning, silent_warning, oversized_warning;
};

state& the_state() {
  // Never destroyed: the sweeper and CAF's threads may still call in while
  // the process exits.
  static auto* st = new state;
  return *st;
}

ino_t inode_of(int fd) {
  struct stat sb {};
  if (::fstat(fd, &sb) != 0 || !S_ISSOCK(sb.st_mode))
    return 0;
  return sb.st_ino;
}

uint16_t local_port(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
    return 0;
  if (addr.ss_family == AF_INET)
    return ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
  if (addr.ss_family == AF_INET6)
    return ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
  return 0;
}

/// Shuts `fd` down if it still is the socket `inode` names (see the top).
bool shut_down(int fd, ino_t inode) {
  int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0)
    return false;
  bool same = inode_of(dup) == inode;
  if (same)
    ::shutdown(dup, SHUT_RDWR);
  ::close(dup);
  return same;
}

/// Forgets connections that CAF closed (caller holds the lock).
void prune(state& st) {
  for (auto i = st.connections.begin(); i != st.connections.end();) {
    if (inode_of(i->first) != i->second.inode) {
      if (!i->second.greeted && !i->second.shut)
        --st.awaiting;
      i = st.connections.erase(i);
    } else {
      ++i;
    }
  }
}

size_t open_on(const state& st, uint16_t port) {
  size_t n = 0;
  for (auto& kv : st.connections)
    n += kv.second.port == port && !kv.second.shut ? 1 : 0;
  return n;
}

void sweep_forever() {
  auto& st = the_state();
  auto last_prune = clock::now();
  for (;;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::lock_guard<std::mutex> guard{st.mtx};
    if (st.exiting)
      return;
    auto now = clock::now();
    for (auto& [fd, c] : st.connections) {
      if (c.greeted || c.shut || now < c.deadline)
        continue;
      if (inode_of(fd) != c.inode) {
        // CAF closed it already (the peer left): nothing to do, not counted.
        c.shut = true;
        --st.awaiting;
        continue;
      }
      if (!shut_down(fd, c.inode))
        continue; // no descriptor for the duplicate now (or just closed): next round
      c.shut = true;
      --st.awaiting;
      ++st.counts.silent;
      if (auto n = st.silent_warning.due()) {
        auto& r = st.rules[c.port];
        log().warn("{}: closed {} connection(s) that sent no first message within {} ms "
                   "({}.handshake-timeout)",
                   r.name, n, r.first_message_timeout.count(), r.name);
      }
    }
    if (now - last_prune > std::chrono::seconds(1)) {
      prune(st);
      last_prune = now;
    }
  }
}

/// accept() found no descriptor: take the waiting connection with the
/// spare one and close it, so that the listening socket is not readable for
/// ever (caller holds the lock).
void drain(state& st, int listener, int (*real)(int, sockaddr*, socklen_t*)) {
  ++st.counts.no_descriptor;
  bool drained = false;
  if (st.spare >= 0) {
    ::close(st.spare);
    int s = real(listener, nullptr, nullptr);
    if (s >= 0) {
      ::close(s);
      drained = true;
    }
    st.spare = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  }
  if (auto n = st.empty_warning.due())
    log().error("no file descriptor left: {} connection(s) closed as they came (raise "
                "LimitNOFILE / ulimit -n, or lower the connection limits)",
                n);
  if (!drained)
    std::this_thread::sleep_for(std::chrono::milliseconds(10)); // bound CAF's retry loop
}

/// What to do with the connection `s` just accepted on `listener`: -1 if it
/// was refused (and closed), `s` otherwise.
int admit(int listener, int s, int (*real)(int, sockaddr*, socklen_t*)) {
  auto& st = the_state();
  if (s < 0) {
    if (errno == EMFILE || errno == ENFILE) {
      std::lock_guard<std::mutex> guard{st.mtx};
      drain(st, listener, real);
      errno = EAGAIN;
    }
    return -1;
  }
  // Each refusal is logged (or counted for the next line) before the peer
  // can see it: whoever watches the log finds it once the connection ends.
  if (s >= st.reserve_floor.load(std::memory_order_relaxed)) {
    ++st.counts.descriptor_reserve;
    {
      std::lock_guard<std::mutex> guard{st.mtx};
      if (auto n = st.reserve_warning.due())
        log().warn("file descriptors are running out: {} connection(s) refused to keep the "
                   "last {} descriptors for workers (raise LimitNOFILE / ulimit -n, or lower "
                   "the connection limits)",
                   n, st.reserve);
    }
    ::close(s);
    errno = EAGAIN;
    return -1;
  }
  std::lock_guard<std::mutex> guard{st.mtx};
  if (st.rules.empty())
    return s;
  auto r = st.rules.find(local_port(listener));
  if (r == st.rules.end())
    return s;
  auto& rules = r->second;
  if (open_on(st, rules.port) >= rules.max_connections)
    prune(st);
  if (auto open = open_on(st, rules.port); open >= rules.max_connections) {
    ++st.counts.max_connections;
    if (auto n = st.full_warning.due())
      log().warn("{}: refused {} connection(s): {} are open ({}.max-connections)", rules.name,
                 n, open, rules.name);
    ::close(s);
    errno = EAGAIN;
    return -1;
  }
  auto& c = st.connections[s];
  if (c.inode != 0 && !c.greeted && !c.shut)
    --st.awaiting; // a closed connection's entry, reused
  c = tracked{};
  c.inode = inode_of(s);
  c.port = rules.port;
  c.deadline = clock::now() + rules.first_message_timeout;
  ++st.awaiting;
  return s;
}

/// A read of `size` bytes is being prepared on `fd`: counts the first
/// message of a tracked connection; false if `size` is over the limit.
bool allow_read(int fd, caf::io::receive_policy::config cfg) {
  auto& st = the_state();
  auto limit = st.max_message.load(std::memory_order_relaxed);
  if (limit != 0 && cfg.second > limit) {
    ++st.counts.oversized;
    {
      std::lock_guard<std::mutex> guard{st.mtx};
      if (auto n = st.oversized_warning.due())
        log().warn("closed {} connection(s) that announced a message of {} bytes, over {} "
                   "({} bytes)",
                   n, cfg.second, st.max_message_key, limit);
    }
    ::shutdown(fd, SHUT_RDWR);
    return false;
  }
  if (st.awaiting.load(std::memory_order_relaxed) == 0
      || cfg.first != caf::io::receive_policy_flag::exactly)
    return true;
  std::lock_guard<std::mutex> guard{st.mtx};
  auto i = st.connections.find(fd);
  if (i == st.connections.end() || i->second.greeted || i->second.shut)
    return true;
  if (++i->second.exact_reads >= 3) {
    i->second.greeted = true;
    --st.awaiting;
  }
  return true;
}

} // namespace

bool active() {
  return interposition::interposed("accept", "libc.so")
         && interposition::interposed(configure_read_symbol, "libcaf_io");
}

void set_max_message_size(size_t bytes, std::string key) {
  auto& st = the_state();
  std::lock_guard<std::mutex> guard{st.mtx};
  st.max_message = bytes;
  st.max_message_key = std::move(key);
}

void set_descriptor_reserve(size_t count) {
  auto& st = the_state();
  std::lock_guard<std::mutex> guard{st.mtx};
  st.reserve = count;
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY
      && lim.rlim_cur > count)
    st.reserve_floor = static_cast<int>(std::min<rlim_t>(lim.rlim_cur - count, INT_MAX));
  else
    st.reserve_floor = INT_MAX;
  if (st.spare < 0)
    st.spare = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
}

void guard(listener_rules rules) {
  auto& st = the_state();
  std::lock_guard<std::mutex> guard{st.mtx};
  st.rules[rules.port] = std::move(rules);
  if (st.spare < 0)
    st.spare = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (!st.sweeping) {
    st.sweeping = true;
    // The logger exists before the exit handler is registered, so the
    // handler runs before the logger is destroyed (reverse order).
    log();
    std::atexit([] {
      auto& s = the_state();
      std::lock_guard<std::mutex> g{s.mtx};
      s.exiting = true;
    });
    std::thread{sweep_forever}.detach();
  }
}

refusals counters() {
  auto& c = the_state().counts;
  return {c.max_connections.load(), c.descriptor_reserve.load(), c.no_descriptor.load(),
          c.silent.load(), c.oversized.load()};
}

} // namespace pyvisor::caf_io_mend

// -- the interposers -------------------------------------------------------------

extern "C" __attribute__((visibility("default"))) int accept(int fd, sockaddr* addr,
                                                             socklen_t* len) {
  using fn = int (*)(int, sockaddr*, socklen_t*);
  static auto real = pyvisor::interposition::next_symbol<fn>("accept");
  if (!pyvisor::interposition::called_from(__builtin_return_address(0), "libcaf_io"))
    return real(fd, addr, len);
  return pyvisor::caf_io_mend::admit(fd, real(fd, addr, len), real);
}

// Exported: this TU is compiled with -fvisibility=default (CMakeLists.txt).
void caf::io::network::stream::configure_read(caf::io::receive_policy::config config) {
  using fn = void (*)(stream*, caf::io::receive_policy::config);
  static auto real = pyvisor::interposition::next_symbol<fn>(
    pyvisor::caf_io_mend::configure_read_symbol);
  if (!pyvisor::caf_io_mend::allow_read(fd(), config))
    config = caf::io::receive_policy::at_most(1);
  real(this, config);
}
