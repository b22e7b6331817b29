// pyvisor::wire limits that configuration structs name: the bound of one
// frame of the pipe protocol (docs/protocol.md) in either direction, a
// request frame to a worker as much as a reply from it. Public (installed as
// <pyvisor/wire_limits.hpp>) so that worker_config can state its default
// without exposing the codec.

#pragma once

#include <cstddef>

namespace pyvisor::wire {

/// Default bound of one frame's body (64 MiB), both directions.
constexpr size_t default_max_frame_size = size_t{64} << 20;

} // namespace pyvisor::wire
