"""Where Dask work runs: an existing scheduler, a local cluster, or in-process threads."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from distributed import Client, LocalCluster


@contextlib.contextmanager
def dask_client(
    scheduler: str | None = None,
    workers: int = 0,
    threads_per_worker: int = 1,
    memory_limit: str = "4GiB",
) -> Iterator[Client | None]:
    """Connect to `scheduler`, or start a LocalCluster of `workers` processes.

    With neither (``workers=0``) no client is made and Dask's in-process threaded scheduler
    runs the work, which is fastest on one small machine. ``memory_limit`` is per worker: workers
    are never unlimited, so a run larger than memory spills or fails instead of swapping.
    """
    if scheduler:
        with Client(scheduler) as client:
            yield client
    elif workers > 0:
        with (
            LocalCluster(
                n_workers=workers,
                threads_per_worker=threads_per_worker,
                memory_limit=memory_limit,
                processes=True,
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client
    else:
        yield None
