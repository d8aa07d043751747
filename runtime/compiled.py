"""Functions compiled with Numba on first call, cached on disk: the solver loops NumPy
cannot vectorise (see pyproject.toml for why Numba)."""

from __future__ import annotations

import functools
import threading
from typing import Callable

# One build at a time: worker threads may ask for a function at once, and two dispatchers
# would each load (or compile) the machine code.
_lock = threading.Lock()


def compiled(fn: Callable) -> Callable:
    """`fn` compiled on its first call, with the GIL released (so that xbar's worker threads
    run it side by side), IEEE arithmetic as written (no fused or reordered operations, so
    results are bit-identical to the same operations in NumPy), and no exception on a
    division by zero (NumPy's inf/nan instead)."""

    dispatcher = None

    def build():
        # Imported here: numba's import costs ~0.3 s that commands without IR drop should
        # not pay; the ~5 s compile per argument type happens once per installation.
        from numba import njit

        options = {"nogil": True, "error_model": "numpy", "boundscheck": False}
        try:
            return njit(cache=True, **options)(fn)
        except RuntimeError:
            # No writable cache anywhere (read-only install, no writable home and no
            # NUMBA_CACHE_DIR): compile in every process instead, ~10 s, rather than fail.
            return njit(cache=False, **options)(fn)

    @functools.wraps(fn)
    def call(*args):
        nonlocal dispatcher
        if dispatcher is None:  # the lock only until the first call has made it
            with _lock:
                if dispatcher is None:
                    dispatcher = build()
        return dispatcher(*args)

    return call

