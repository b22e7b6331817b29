"""The worker's side of its two shared rings (docs/protocol.md, "Shared memory").

The node gives each worker two memfds: fd 6, the ring it reads large
arguments from, and fd 7, the ring it writes large results and chunks to.
A frame names a value there as ``shm: [position, length]``; the reader
copies the value out as it reads the frame (frames are read in pipe order,
so a ring is freed in the order it was filled) and publishes how far it has
read in the ring's first 8 bytes (its ``tail``). The writer's position stays
its own. The C++ side is actors/process/shared_ring.hpp; the layout (a page
of header, then the data; a value never wraps the end) is the same.

Nothing here blocks: a value that does not fit goes by pipe.
"""

import mmap
import os

HEADER = 4096
_NAMES = {6: "/memfd:pyvisor-to-worker", 7: "/memfd:pyvisor-from-worker"}


class Ring:
    def __init__(self, fd):
        size = os.fstat(fd).st_size
        self.capacity = size - HEADER
        self._map = mmap.mmap(fd, size)
        os.close(fd)  # the mapping keeps what it needs
        view = memoryview(self._map)
        # An aligned 8-byte item: CPython reads and writes it with one load
        # or store (a memcpy of a constant 8 bytes), so the node never sees
        # half of it.
        self._tail = view[:8].cast("Q")
        self.data = view[HEADER:]
        self._head = 0  # writer: end of the last reservation
        self._read = 0  # reader: how far it has released

    # The reader's side (fd 6, filled by the node).

    def view(self, pos, length):
        """The value at `pos` (a view: copy or decode it, then release())."""
        off = pos % self.capacity
        if pos < self._read or length > self.capacity or off + length > self.capacity:
            raise ValueError("shared value at %d (%d bytes) is outside the ring" % (pos, length))
        return self.data[off:off + length]

    def release(self, pos, length):
        """The value at `pos` and everything before it are read."""
        self._read = pos + length
        self._tail[0] = self._read

    # The writer's side (fd 7, read by the node).

    def reserve(self, length):
        """A position for `length` bytes, or None when they do not fit now."""
        if length == 0 or length > self.capacity:
            return None
        tail = self._tail[0]
        pos = self._head
        if pos % self.capacity + length > self.capacity:
            pos += self.capacity - pos % self.capacity
        if tail != self._head and pos + length - tail > self.capacity:
            return None
        self._head = pos + length
        return pos

    def at(self, pos, length):
        off = pos % self.capacity
        return self.data[off:off + length]


def _is_ring(fd):
    try:
        return os.readlink("/proc/self/fd/%d" % fd).startswith(_NAMES[fd])
    except OSError:
        return False


def open_rings():
    """(ring in, ring out, threshold) when the node gave this worker its rings,
    else None."""
    if not (_is_ring(6) and _is_ring(7)):
        return None
    try:
        threshold = int(os.environ.get("PYVISOR_SHM_THRESHOLD", "65536"))
    except ValueError:
        threshold = 65536
    return Ring(6), Ring(7), max(threshold, 1)
