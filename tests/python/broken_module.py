"""A user module that fails to import, for start-up failure tests."""

import pyvisor  # noqa: F401

raise RuntimeError("this module is broken on purpose")
