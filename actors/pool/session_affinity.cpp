#include "actors/pool/session_affinity.hpp"

#include <vector>

#include "caf/actor_system.hpp"
#include "caf/send.hpp"
#include "caf/stateful_actor.hpp"
#include "caf/typed_event_based_actor.hpp"

#include "actors/pool/expiring_index.hpp"
#include "messages/log.hpp"

namespace pyvisor {

namespace {

struct binding {
  uint32_t slot = no_slot;
  /// The slot's incarnation when bound; a newer one means the state is gone.
  uint32_t incarnation = 0;
  /// Requests routed and not yet ended: while any, the session is active.
  uint32_t active = 0;
};

enum class tombstone : uint8_t { expired, lost };

struct slot_info {
  worker_actor handle;
  uint32_t incarnation = 0;
  bool up = false;
};

struct affinity_state {
  session_settings settings;
  expiring_index<binding> sessions;
  expiring_index<tombstone> remembered;
  std::vector<slot_info> slots;
  affinity_stats stats;

  static inline const char* name = "pyvisor.session_affinity";
};

using self_ptr = session_affinity_actor::stateful_pointer<affinity_state>;

int64_t now_ns(self_ptr self) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
           self->clock().now().time_since_epoch())
    .count();
}

slot_info& slot(self_ptr self, uint32_t s) {
  auto& slots = self->state.slots;
  if (s >= slots.size())
    slots.resize(s + 1);
  return slots[s];
}

void drop_in_worker(self_ptr self, const std::string& id, const binding& b) {
  auto& st = self->state;
  if (b.slot < st.slots.size()) {
    auto& s = st.slots[b.slot];
    if (s.up && s.incarnation == b.incarnation && s.handle)
      self->send(s.handle, drop_session_atom::value, id);
  }
}

void remember(self_ptr self, const std::string& id, tombstone kind, int64_t now) {
  auto& rem = self->state.remembered;
  if (auto e = rem.find(id)) {
    e->value = kind;
    rem.touch(*e, now);
  } else {
    if (rem.size() >= self->state.settings.max_sessions)
      rem.erase_oldest();
    rem.insert(id, kind, now);
  }
}

// What expiry means, wherever it is noticed (lookup or cleanup): the worker
// drops the state and the id is remembered as expired. The caller removes the
// session's entry.
void on_expired(self_ptr self, const std::string& id, const binding& b, int64_t now) {
  drop_in_worker(self, id, b);
  remember(self, id, tombstone::expired, now);
  ++self->state.stats.expired;
}

void cleanup(self_ptr self) {
  auto& st = self->state;
  auto now = now_ns(self);
  auto timeout = st.settings.timeout.count();
  // Inserting into `remembered` while `sessions` expires is fine: they are
  // separate containers.
  st.sessions.expire(
    now - timeout, now, [](const binding& b) { return b.active > 0; },
    [&](const std::string& id, binding& b) { on_expired(self, id, b, now); });
  st.remembered.expire(now - st.settings.remember.count(), [](const std::string&, tombstone) {});
}

} // namespace

session_affinity_actor spawn_session_affinity(caf::actor_system& sys, session_settings settings) {
  return sys.spawn([settings](self_ptr self) -> session_affinity_actor::behavior_type {
    self->state.settings = settings;
    self->delayed_send(self, settings.cleanup_interval, cleanup_atom::value);
    return {
      [self](route_atom, std::string& id,
             uint32_t candidate) -> caf::result<uint32_t, uint32_t> {
        auto& st = self->state;
        auto now = now_ns(self);
        if (auto e = st.sessions.find(id)) {
          // Exact expiry at lookup time, from the same setting as cleanup.
          if (e->value.active == 0 && now - e->stamp > st.settings.timeout.count()) {
            auto b = e->value;
            st.sessions.erase(*e);
            on_expired(self, id, b, now);
            return make_error(error_code::session_expired,
                              "session '" + id + "' expired after being idle for longer than "
                                + std::to_string(std::chrono::duration_cast<
                                                   std::chrono::milliseconds>(st.settings.timeout)
                                                   .count())
                                + " ms");
          }
          auto b = e->value;
          auto& s = slot(self, b.slot);
          if (!s.up || s.incarnation != b.incarnation) {
            st.sessions.erase(*e);
            remember(self, id, tombstone::lost, now);
            ++st.stats.lost;
            // Named as every log line names it (worker_id_of: slot + 1).
            return session_lost_error(id, "its worker (worker " + std::to_string(b.slot + 1)
                                            + ") died");
          }
          ++e->value.active;
          st.sessions.touch(*e, now);
          return {b.slot, b.incarnation};
        }
        if (auto r = st.remembered.find(id)) {
          if (now - r->stamp <= st.settings.remember.count()) {
            if (r->value == tombstone::expired)
              return make_error(error_code::session_expired, "session '" + id + "' expired");
            return session_lost_error(id, "its worker died");
          }
          st.remembered.erase(*r);
        }
        if (st.sessions.size() >= st.settings.max_sessions)
          return make_error(error_code::overloaded,
                            "the pool holds " + std::to_string(st.sessions.size())
                              + " live sessions (session.max-sessions); end sessions or "
                                "retry later");
        if (candidate == no_slot || !slot(self, candidate).up)
          return {no_slot, uint32_t{0}};
        auto& s = slot(self, candidate);
        st.sessions.insert(id, binding{candidate, s.incarnation, 1}, now);
        ++st.stats.bound;
        return {candidate, s.incarnation};
      },
      [self](worker_up_atom, uint32_t s, uint32_t incarnation, worker_actor& handle) {
        auto& info = slot(self, s);
        info.handle = std::move(handle);
        info.incarnation = incarnation;
        info.up = true;
      },
      [self](worker_down_atom, uint32_t s) {
        auto& info = slot(self, s);
        // Sessions bound to the old incarnation are detected lazily, at their
        // next lookup (session_lost) or by the idle cleanup: no scan here.
        info.up = false;
        info.handle = nullptr;
      },
      [self](end_session_atom, std::string& id) {
        auto& st = self->state;
        bool existed = false;
        if (auto e = st.sessions.find(id)) {
          drop_in_worker(self, id, e->value);
          st.sessions.erase(*e);
          existed = true;
        }
        if (auto r = st.remembered.find(id)) {
          st.remembered.erase(*r);
          existed = true;
        }
        if (existed)
          ++st.stats.ended;
        return existed;
      },
      [self](configure_atom, caf::timespan timeout) {
        auto& st = self->state;
        auto previous = st.settings.timeout;
        st.settings.timeout = timeout;
        log().info("session timeout changed from {} ms to {} ms",
                   std::chrono::duration_cast<std::chrono::milliseconds>(previous).count(),
                   std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count());
        cleanup(self);
        return previous;
      },
      [self](status_atom) {
        auto stats = self->state.stats;
        stats.sessions = self->state.sessions.size();
        stats.remembered = self->state.remembered.size();
        return stats;
      },
      [self](sessions_atom) {
        std::vector<std::string> ids;
        auto& st = self->state;
        auto now = now_ns(self);
        st.sessions.for_each([&](const std::string& id, const binding& b, int64_t stamp) {
          if (b.active > 0 || now - stamp <= st.settings.timeout.count())
            ids.push_back(id);
        });
        return ids;
      },
      [self](sessions_lost_atom, std::vector<std::string>& ids) {
        auto now = now_ns(self);
        for (auto& id : ids)
          remember(self, id, tombstone::lost, now);
        self->state.stats.lost += ids.size();
      },
      [self](session_done_atom, const std::string& id) {
        auto& st = self->state;
        if (auto e = st.sessions.find(id)) {
          if (e->value.active > 0)
            --e->value.active;
          st.sessions.touch(*e, now_ns(self)); // idle from now on
        }
      },
      [self](cleanup_atom) {
        cleanup(self);
        // Only timer ticks re-arm; an explicit cleanup request must not
        // multiply the timers.
        if (self->current_sender() == self->ctrl())
          self->delayed_send(self, self->state.settings.cleanup_interval, cleanup_atom::value);
      },
    };
  });
}

} // namespace pyvisor
