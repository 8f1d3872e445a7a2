"""The limits a run's supervisor enforces itself, and why a run ended over one (issue 12).

The kernel ends a run over its memory, CPU time or file size, or refuses its
forks; the supervisor then only has to say which limit it was. Output bytes and
workspace disk have no kernel limit, and a refused fork or an OOM kill inside a
still-running run is no end either: this guard watches for them and trips, and
the supervisor stops the run with the limit as its reason.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable

import gevent

from app.sandbox import Limits, MiB, RunCgroup

# How often a run's cgroup counters are read, and its workspace measured (every Nth).
CHECK_S = 0.5
DISK_CHECK_EVERY = 4


def disk_usage(path: str) -> int:
    """Bytes under `path` (blocks really used), not following symlinks."""
    total = 0
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


class LimitGuard:
    """One run's limits: counts its output, watches its cgroup and disk, names a breach."""

    def __init__(
        self, limits: Limits, cgroup: RunCgroup | None, workspace: str, trip: Callable[[], None]
    ) -> None:
        self.limits = limits
        self.cgroup = cgroup
        self.workspace = workspace
        self.output_bytes = 0
        self.over: str | None = None  # the limit the guard tripped on
        self._trip_callback = trip

    def count_output(self, n: int) -> None:
        self.output_bytes += n
        if self.output_bytes > self.limits.output_mb * MiB:
            self._trip("output")

    def _trip(self, what: str) -> None:
        if self.over is None:
            self.over = what
            self._trip_callback()

    def watch(self) -> None:
        """Trip once the run goes over a limit the kernel does not end it for (a greenlet)."""
        pool = gevent.get_hub().threadpool
        checks = 0
        while self.over is None:
            gevent.sleep(CHECK_S)
            checks += 1
            # A refused fork or an OOM kill inside: the run is over its limit.
            if self.cgroup is not None and (what := self.cgroup.exceeded()):
                return self._trip(what)
            if checks % DISK_CHECK_EVERY == 0:
                if pool.apply(disk_usage, (self.workspace,)) > self.limits.disk_mb * MiB:
                    return self._trip("workspace disk")
        return None

    def ended_over(self, returncode: int | None) -> str | None:
        """The limit a run that ended with `returncode` went over, if any."""
        if self.over:
            return self.over
        if returncode == 0:
            return None  # it coped with a refused fork and finished: not a breach
        if self.cgroup is not None and (what := self.cgroup.exceeded()):
            return what
        # bwrap reports a signal death as 128 + signal; an unsandboxed child as -signal.
        if returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
            return "CPU time"
        if returncode in (-signal.SIGXFSZ, 128 + signal.SIGXFSZ):
            return "file size"
        return None

    def reason(self, what: str) -> str:
        lim = self.limits
        amount = {
            "memory": f"{lim.memory_mb} MB", "processes": f"{lim.processes} processes",
            "CPU time": f"{lim.cpu_s} s", "output": f"{lim.output_mb} MB",
            "workspace disk": f"{lim.disk_mb} MB", "file size": f"{lim.disk_mb} MB",
        }[what]  # fmt: skip
        return f"stopped: over its {what} limit ({amount})"

    def close(self) -> None:
        """Kill what is left in the run's cgroup and remove it (off the event loop)."""
        if self.cgroup is not None:
            gevent.get_hub().threadpool.apply(self.cgroup.kill_and_remove)
