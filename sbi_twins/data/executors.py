"""Where chunks of work run: this process, local worker processes, or a Dask cluster."""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
from typing import Any


def _single_thread_numba() -> None:
    """Worker-process initialiser: one process per core, so one Numba thread per process."""
    import numba

    numba.set_num_threads(1)


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
        self._pool: futures.Executor | None = None
        if dask_address is not None:
            from distributed import Client

            self._dask = Client(dask_address)
            self.slots = max(1, sum(self._dask.nthreads().values()))
        elif workers > 1:
            import multiprocessing

            self._pool = futures.ProcessPoolExecutor(
                workers,
                mp_context=multiprocessing.get_context("spawn"),  # no fork of Numba's threads
                initializer=_single_thread_numba,
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

    def close(self) -> None:
        """Stop the workers (cancelling what has not started) or leave the cluster."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._dask is not None:
            self._dask.close()
