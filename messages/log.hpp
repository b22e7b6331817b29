// pyvisor::log(): the spdlog logger every pyvisor component writes to.
//
// It is the logger registered under the name "pyvisor"; if none is registered
// when first used, one writing to stderr is created, so that a library user's
// stdout stays theirs. Register your own "pyvisor" logger (any sinks) before
// starting pyvisor actors to redirect it. Lives beside the message vocabulary
// because every layer (supervision, actors) uses it and it depends on nothing.

#pragma once

#include <memory>

#include <spdlog/logger.h>

namespace pyvisor {

spdlog::logger& log();

} // namespace pyvisor
