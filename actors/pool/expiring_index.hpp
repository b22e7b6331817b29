// pyvisor::expiring_index: a hash index of string ids whose entries are also
// kept in an intrusive list ordered by the time they were last touched.
//
// It is the bookkeeping behind session affinity, built for a million entries:
// - find / insert / touch / erase are O(1) (average);
// - expire(cutoff) pops entries touched at or before `cutoff` from the list's
//   head, so its cost is proportional to what expires, not to the size;
// - per entry: one hash node holding the id, the value, a time stamp and two
//   list pointers (about 100 bytes for ids up to 15 characters on 64-bit
//   libstdc++; bench/ measures it).
// Time stamps must not decrease between calls (use a monotonic clock), which
// is what keeps the list sorted: touch moves an entry to the tail.

#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>

namespace pyvisor {

template <class Value>
class expiring_index {
public:
  struct entry {
    Value value;
    int64_t stamp = 0;
    entry* prev = nullptr;
    entry* next = nullptr;
    const std::string* key = nullptr;
  };

  entry* find(const std::string& id) {
    auto i = map_.find(id);
    return i == map_.end() ? nullptr : &i->second;
  }

  /// Inserts `id` (must not exist) as the most recently touched entry.
  entry& insert(const std::string& id, Value value, int64_t now) {
    auto res = map_.emplace(id, entry{});
    auto& e = res.first->second;
    e.value = std::move(value);
    e.stamp = now;
    e.key = &res.first->first;
    link_back(e);
    return e;
  }

  /// Marks `e` as used at `now`.
  void touch(entry& e, int64_t now) {
    e.stamp = now;
    if (tail_ == &e)
      return;
    unlink(e);
    link_back(e);
  }

  void erase(entry& e) {
    unlink(e);
    map_.erase(*e.key);
  }

  /// Removes every entry stamped at or before `cutoff`, oldest first, calling
  /// `on_expired(id, value)` before each removal. Returns how many expired.
  template <class F>
  size_t expire(int64_t cutoff, F&& on_expired) {
    return expire(cutoff, cutoff, [](const Value&) { return false; },
                  std::forward<F>(on_expired));
  }

  /// As above, except that an entry for which `keep(value)` holds is
  /// touched at `now` (> cutoff) instead: it is in use, not idle.
  template <class Keep, class F>
  size_t expire(int64_t cutoff, int64_t now, Keep&& keep, F&& on_expired) {
    size_t n = 0;
    while (head_ != nullptr && head_->stamp <= cutoff) {
      auto& e = *head_;
      if (keep(e.value)) {
        touch(e, now);
        continue;
      }
      on_expired(*e.key, e.value);
      erase(e);
      ++n;
    }
    return n;
  }

  /// Removes the least recently touched entry, if any.
  void erase_oldest() {
    if (head_ != nullptr)
      erase(*head_);
  }

  /// Calls `f(id, value, stamp)` for every entry, oldest first.
  template <class F>
  void for_each(F&& f) const {
    for (auto e = head_; e != nullptr; e = e->next)
      f(*e->key, e->value, e->stamp);
  }

  /// The oldest entry's stamp (or `fallback` when empty).
  int64_t oldest(int64_t fallback) const noexcept {
    return head_ ? head_->stamp : fallback;
  }

  size_t size() const noexcept {
    return map_.size();
  }

  void reserve(size_t n) {
    map_.reserve(n);
  }

private:
  void link_back(entry& e) {
    e.prev = tail_;
    e.next = nullptr;
    if (tail_)
      tail_->next = &e;
    else
      head_ = &e;
    tail_ = &e;
  }

  void unlink(entry& e) {
    if (e.prev)
      e.prev->next = e.next;
    else
      head_ = e.next;
    if (e.next)
      e.next->prev = e.prev;
    else
      tail_ = e.prev;
    e.prev = e.next = nullptr;
  }

  // Nodes of std::unordered_map never move, so the list may point into them.
  std::unordered_map<std::string, entry> map_;
  entry* head_ = nullptr;
  entry* tail_ = nullptr;
};

} // namespace pyvisor
