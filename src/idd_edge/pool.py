"""One function over many independent jobs in worker processes, with a progress bar."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from tqdm import tqdm

Job = TypeVar("Job")
Result = TypeVar("Result")


def map_in_processes(function: Callable[[Job], Result], jobs: Sequence[Job], workers: int, progress: dict[str, Any],
                     chunksize: int | None = None, min_jobs: int | None = None) -> list[Result]:
    """`[function(job) for job in jobs]` in job order, from `workers` processes; in this process when
    `workers` <= 1 or there are fewer than `min_jobs` jobs (default 2 per worker: starting the processes
    would cost more than they save). `progress`: tqdm options (desc, unit, ...); `chunksize`: jobs handed
    to a process at once (default: ~8 chunks per worker). `function` must be importable (picklable)."""
    bar = {"total": len(jobs), **progress}
    if workers <= 1 or len(jobs) < (2 * workers if min_jobs is None else min_jobs):
        return [function(job) for job in tqdm(jobs, **bar)]
    chunksize = chunksize or max(1, math.ceil(len(jobs) / (workers * 8)))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(function, jobs, chunksize=chunksize), **bar))
