// How a worker_config becomes a Python process: the command line, the
// import path and the environment that the Python worker and the pool's
// fork-server template (actors/fork_server/) share.

#pragma once

#include <string>

#include "actors/process/python_process.hpp"
#include "pyvisor/worker.hpp"

namespace pyvisor {

/// Runs `module`'s main() with cfg.python, fds 3/4 as the protocol pipes,
/// cfg.modules as --module arguments, cfg.python_path before the pyvisor
/// package's directory on PYTHONPATH, unbuffered output. `tag` names it in
/// logs.
process_options python_options(const worker_config& cfg, const std::string& module,
                               std::string tag);

/// What a process started with `python` says when it exits with status 3:
/// the interpreter has no msgpack (python/pyvisor/worker.py), and the fix.
std::string missing_msgpack(const std::string& python);

/// The exit status of a Python process that finds no pyvisor package (the
/// bootstrap python_options writes), and what to say then: where it was
/// looked for and what to set.
constexpr int exit_no_package = 7;
std::string missing_package();

} // namespace pyvisor
