"""glibc malloc settings that keep a CPU step's temporaries mapped from one call to the next.

XLA:CPU allocates an executable's temporaries at every call and frees them when it ends.
glibc gives a request above its mmap threshold a mapping of its own, unmapped when freed, and
trims its heaps, so the next call faults every page in again and the kernel zeroes each one:
for a training step with tens of MB of temporaries that is a large share of the step. When
the native CPU kernels or the XLA loops first run on a CPU, :func:`keep_freed_memory` asks
glibc (``mallopt``) to serve every request from its heaps and to keep what is freed there, so
one step's memory is reused by the next. The process then holds on to its peak memory instead of returning it.
``JAXRNN_HOST_TUNABLES=0`` leaves malloc as the process started.
"""

from __future__ import annotations

import ctypes
import functools
import os

OPT_OUT = "JAXRNN_HOST_TUNABLES"  # "0": leave the C library's malloc settings alone

# mallopt's parameters (malloc.h) and the values set: no request mapped on its own, heaps
# never trimmed, 64 MiB of padding so that an emptied worker-thread heap stays mapped.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
SETTINGS = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, 64 << 20))


def glibc_version() -> tuple[int, int] | None:
    """``(major, minor)`` of the C library this process runs on, or ``None`` if it is not glibc."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # e.g. "glibc 2.36"
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (AttributeError, ValueError, OSError):  # no confstr / not glibc
        return None


@functools.cache
def keep_freed_memory() -> bool:
    """Applies :data:`SETTINGS` once per process; whether they are in effect (``False`` off
    glibc or with ``JAXRNN_HOST_TUNABLES=0``)."""
    if os.environ.get(OPT_OUT) == "0" or glibc_version() is None:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in SETTINGS)
