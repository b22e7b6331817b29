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

/// What the bootstrap (no package, exit_no_package) and the worker (no
/// msgpack, exit 3) write to stderr before they exit: an exit status alone
/// proves nothing, user code may exit with any (a module that calls
/// os._exit(7) at start-up is no missing package).
constexpr const char* no_package_mark = "pyvisor: no pyvisor package in ";
constexpr const char* no_msgpack_mark = "has no 'msgpack' module";

/// A process that exited with `code` and wrote `stderr_tail` lacks msgpack.
inline bool says_no_msgpack(int code, const std::string& stderr_tail) {
  return code == 3 && stderr_tail.find(no_msgpack_mark) != std::string::npos;
}

/// A process that exited with `code` and wrote `stderr_tail` found no
/// pyvisor package.
inline bool says_no_package(int code, const std::string& stderr_tail) {
  return code == exit_no_package && stderr_tail.find(no_package_mark) != std::string::npos;
}

} // namespace pyvisor
