"""A real Dask cluster on loopback, as an operator starts one: a `dask scheduler` process and
`dask worker` processes (no nanny, so that a SIGKILL loses the worker for good), each importing
the gridded under test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import gridded

SRC = str(Path(gridded.__file__).resolve().parents[1])  # the workers import the gridded under test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaskProcesses:
    """`dask scheduler` and `dask worker` processes on 127.0.0.1; workers are named w0, w1, ..."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.env = os.environ | {"PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
                                 "DASK_LOGGING__DISTRIBUTED": "warning"}
        self.scheduler = self._start("scheduler", ["dask", "scheduler", "--host", "127.0.0.1", "--port",
                                                   str(self.port), "--no-dashboard"])
        self.workers: dict[str, subprocess.Popen] = {}

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        return subprocess.Popen(args, env=self.env, stdout=subprocess.DEVNULL,
                                stderr=(self.logs / f"{name}.log").open("wb"))

    def add_worker(self, *, nthreads: int = 1, memory_limit: str = "1GiB", resources: str | None = None) -> str:
        name = f"w{len(self.workers)}"
        args = ["dask", "worker", self.address, "--name", name, "--nthreads", str(nthreads), "--memory-limit",
                memory_limit, "--no-nanny", "--no-dashboard", "--host", "127.0.0.1", "--death-timeout", "60"]
        if resources:
            args += ["--resources", resources]
        self.workers[name] = self._start(name, args)
        return name

    def wait(self, timeout_s: float = 120) -> dict[str, str]:
        """Wait until every worker has joined; returns worker name -> address."""
        from distributed import Client

        deadline = time.monotonic() + timeout_s
        with Client(self.address, timeout="60s") as client:
            client.wait_for_workers(len(self.workers), timeout=max(1.0, deadline - time.monotonic()))
            return {w["name"]: address for address, w in client.scheduler_info(n_workers=-1)["workers"].items()}

    def kill(self, name: str) -> None:
        self.workers[name].send_signal(signal.SIGKILL)
        self.workers[name].wait()

    def kill_scheduler(self) -> None:
        self.scheduler.send_signal(signal.SIGKILL)
        self.scheduler.wait()

    def close(self) -> None:
        """The workers first (while the scheduler still answers their goodbye), then the scheduler."""
        for group in (list(self.workers.values()), [self.scheduler]):
            for proc in group:
                if proc.poll() is None:
                    proc.terminate()
            for proc in group:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def started_cluster(logs: Path, workers: list[dict]) -> tuple[DaskProcesses, dict[str, str]]:
    """A scheduler and one worker per dict of add_worker's options, all joined."""
    cluster = DaskProcesses(logs)
    try:
        for options in workers:
            cluster.add_worker(**options)
        return cluster, cluster.wait()
    except BaseException:
        cluster.close()
        raise
