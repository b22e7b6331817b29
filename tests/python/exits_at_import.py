"""A user module that ends its process at import with the status that the
bootstrap uses for "no pyvisor package" (7): it must not be taken for one."""

import os

os._exit(7)
