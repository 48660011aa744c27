"""The numba threading layer the CPU kernels run on.

numba's own fallback layer, ``workqueue``, is not safe when several Python threads launch
parallel kernels at once (and not fork-safe); its OpenMP (``omp``, the system's libgomp) and
TBB (``tbb``, the ``tbb`` wheel) layers are. :func:`choose_threadsafe_layer` asks numba for
a thread-safe layer (``'threadsafe'``: TBB, else OpenMP) when one of them can be loaded and
the user has not picked a layer (``NUMBA_THREADING_LAYER``); otherwise numba's default
choice stands, and on ``workqueue`` concurrent calls into ``backend='cpu'`` from several
threads are not supported (one thread at a time, or processes).
"""

from __future__ import annotations

import importlib
import os

import numba


def _loadable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:  # the layer's runtime library (libgomp, libtbb) is missing
        return False
    return True


def choose_threadsafe_layer() -> str:
    """Set numba's threading layer to ``'threadsafe'`` where TBB or OpenMP loads and no
    layer was requested; returns the layer setting in force (a numba layer name or
    priority word)."""
    if "NUMBA_THREADING_LAYER" not in os.environ and numba.config.THREADING_LAYER == "default":
        if _loadable("numba.np.ufunc.tbbpool") or _loadable("numba.np.ufunc.omppool"):
            numba.config.THREADING_LAYER = "threadsafe"
    return numba.config.THREADING_LAYER
