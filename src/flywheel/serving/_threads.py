"""One thread per native library in a serving process.

A serving process already has its parallelism: the event loop, the inference threads, and, with
``--workers N``, N processes. OpenBLAS, MKL, OpenMP (and torch's intra-op pool, which follows
``OMP_NUM_THREADS``) each start one thread per core by default; on a 2-core machine that is
several runnable threads per core competing with the loop for every batch, and a latency tail
whenever one of them is descheduled mid-operation. ``limit_native_threads`` caps them: the
environment variables for libraries loaded later and for worker processes (a value the user set
is kept), and ``threadpoolctl`` for those already loaded in this process. onnxruntime takes its
thread count per session, not from the environment (its sessions are opened by the registry).
"""

from __future__ import annotations

import os

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def limit_native_threads(threads: int) -> dict[str, str]:
    """Cap the native thread pools of this process (and its future children) at ``threads``.

    Returns the thread variables as they now stand (a variable the user had set is left as it
    was, and so are the already loaded libraries it governs).
    """
    if threads < 1:
        raise ValueError(f"serving.native_threads must be >= 1, got {threads}")
    preset = [var for var in THREAD_VARIABLES if var in os.environ]
    for var in THREAD_VARIABLES:
        os.environ.setdefault(var, str(threads))
    if not preset:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # numpy/scikit-learn not installed: nothing loaded to cap
            pass
        else:
            threadpool_limits(threads)  # the BLAS/OpenMP libraries loaded already
    return {var: os.environ[var] for var in THREAD_VARIABLES}


__all__ = ["THREAD_VARIABLES", "limit_native_threads"]
