// Compiled into each program built against an installed pyvisor CMake
// package (pyvisorConfig.cmake adds it to pyvisor::pyvisor's interface
// sources, with PYVISOR_PACKAGE_PYTHON_DIR set to that package's Python
// directory): tells the library where the Python package of that
// installation is, so that an application installed anywhere finds it
// (actors/worker/worker.hpp, default_python_dir). Weak: several targets of
// one program may each compile it.
extern "C" __attribute__((weak, visibility("default"))) const char*
pyvisor_package_python_dir() {
  return PYVISOR_PACKAGE_PYTHON_DIR;
}
