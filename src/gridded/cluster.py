"""A worker's share of the machine (CPUs and memory, cgroup limits included) and its own Dask
LocalCluster: the one CPU count every thread pool of a worker is sized from."""

from __future__ import annotations

import os
from functools import cache


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota (a pod's limit)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_cpus()
    return max(1, min(cpus, quota) if quota else cpus)


def worker_resources(workers_on_machine: int = 1) -> tuple[int, int]:
    """(threads, memory bytes) this worker may use: its share of the CPUs and memory it can see."""
    import psutil

    memory = psutil.virtual_memory().total
    cg_mem = _cgroup_memory()
    if cg_mem:
        memory = min(memory, cg_mem)
    share = max(1, workers_on_machine)
    return max(1, available_cpus() // share), memory // share


def _cgroup_cpus() -> int | None:
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()
        return None if quota == "max" else max(1, int(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def _cgroup_memory() -> int | None:
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            value = f.read().strip()
        return None if value == "max" else int(value)
    except (OSError, ValueError):
        return None


# glibc's mallopt parameters, and the values a worker sets: every tile allocates and frees the same
# few-megabyte arrays (stacks, GDAL's decoded blocks, COG buffers), which glibc would otherwise hand
# back to the kernel and fault in afresh each time (up to a sixth of a worker's CPU time, in the kernel)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's largest
TRIM_THRESHOLD_BYTES = 256 << 20


@cache
def tune_allocator() -> bool:
    """Keep freed memory of up to 32 MB blocks in the process for reuse (glibc only; else nothing)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                    and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


@cache
def freeze_heap() -> None:
    """Leave every object alive now (the modules imported, the cluster, the plan) out of the cyclic
    garbage collector's passes: a task allocates many objects, and each full collection would
    otherwise walk the whole heap again, holding the GIL the other tasks need."""
    import gc

    gc.freeze()


@cache
def local_client(threads: int, memory: int):
    """This process's own LocalCluster, started once and kept for its later batches."""
    import dask
    from distributed import Client, LocalCluster

    # threads, not processes: the kernels release the GIL and so do GDAL's reads. Without the
    # worker's statistical profiler unless DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED asks for it:
    # it samples every thread's stack a hundred times a second, holding the GIL the tasks need
    asked = "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED" in os.environ
    profile = asked and bool(dask.config.get("distributed.worker.profile.enabled"))
    with dask.config.set({"distributed.worker.profile.enabled": profile}):
        cluster = LocalCluster(n_workers=1, threads_per_worker=threads, processes=False,
                               memory_limit=memory, dashboard_address=":0")
    return Client(cluster)
