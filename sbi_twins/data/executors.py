"""Where chunks of work run: this process, local worker processes, or a Dask cluster.

Local workers never outlive the process that started them: they ignore Ctrl-C (the terminal
sends SIGINT to the whole process group; the main process handles it and stops them, so no
worker prints a traceback), and they exit when their parent dies, even by ``kill -9``: on Linux
the kernel sends them SIGKILL (``PR_SET_PDEATHSIG``), elsewhere a thread polls the parent pid
(between calls into compiled code, which holds the interpreter).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

#: prctl option: signal this process when its parent dies (linux/prctl.h).
_PR_SET_PDEATHSIG = 1
#: Seconds between two looks at the parent pid where the kernel cannot watch it.
_PARENT_POLL_S = 1.0


def _init_worker(parent_pid: int) -> None:
    """Worker-process initialiser: one Numba thread, no Ctrl-C, exit with the parent."""
    import numba

    numba.set_num_threads(1)  # one process per core, so one Numba thread per process
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent_pid)


def _die_with_parent(parent_pid: int) -> None:
    """Make this process exit as soon as ``parent_pid`` (its parent) is gone."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="sbi-twins-parent-watch", daemon=True).start()


class Executor:
    """Runs calls in this process, in local worker processes, or on a Dask cluster.

    Parameters
    ----------
    workers : int
        Local worker processes (1: in this process). Started with ``spawn``, so a script that
        uses them must guard its top level with ``if __name__ == "__main__":``.
    dask_address : str or None
        Address of a Dask scheduler; overrides ``workers``.
    """

    def __init__(self, workers: int, dask_address: str | None):
        self._dask = None
        self._pool: futures.ProcessPoolExecutor | None = None
        if dask_address is not None:
            from distributed import Client

            self._dask = Client(dask_address)
            self.slots = max(1, sum(self._dask.nthreads().values()))
        elif workers > 1:
            import multiprocessing

            self._pool = futures.ProcessPoolExecutor(
                workers,
                mp_context=multiprocessing.get_context("spawn"),  # no fork of Numba's threads
                initializer=_init_worker,
                initargs=(os.getpid(),),
            )
            self.slots = workers
        else:
            self.slots = 1

    def submit(self, function: Callable[..., Any], *args: Any):
        """Run ``function(*args)``; a future of its result."""
        if self._dask is not None:
            return self._dask.submit(function, *args, pure=False)
        if self._pool is not None:
            return self._pool.submit(function, *args)
        done: futures.Future = futures.Future()
        try:
            done.set_result(function(*args))
        except BaseException as e:  # noqa: BLE001 - delivered through the future, as a pool would
            done.set_exception(e)
        return done

    def wait_any(self, pending: set) -> tuple[set, set]:
        """Wait until at least one of the ``pending`` futures is done: (done, not done)."""
        if self._dask is not None:
            from distributed import wait

            result = wait(list(pending), return_when="FIRST_COMPLETED")
            return set(result.done), set(result.not_done)
        return futures.wait(pending, return_when=futures.FIRST_COMPLETED)

    def close(self, *, abort: bool = False) -> None:
        """Stop the workers (cancelling what has not started) or leave the cluster.

        With ``abort`` (Ctrl-C, an error) local workers are terminated at once instead of
        finishing their chunks; what they were writing is a temporary directory the next run
        deletes.
        """
        if self._pool is not None:
            if abort:
                # The pool has no public way to stop running calls (Python 3.14 adds
                # terminate_workers); its private process table is the only handle on them.
                for process in list((self._pool._processes or {}).values()):
                    process.terminate()
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._dask is not None:
            self._dask.close()
