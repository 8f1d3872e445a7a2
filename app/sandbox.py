"""Sandbox: every local run starts under bubblewrap, inside its limits (issue 12).

Agents act on text anyone can write, so assume each run is prompt-injected. Inside
the sandbox the run sees the machine read-only, minus what would let it reach the
hub: the data dir (secret key, database), the workspaces and homes of other runs,
backups, the hub's own HOME and env files, and /run's sockets do not show (each is
an empty read-only tmpfs). Writable: its own workspace, its agent's HOME and a
private /tmp. It gets a new PID namespace (no hub process is visible, and killing
bwrap ends every process inside), a new session, no capabilities, and dies with
the hub. The network stays on unless the agent turns it off: the CLIs call their
vendors.

Limits: memory and processes through cgroups where the machine lets us create
them (v2 under systemd's Delegate=yes, or v1 controllers we can write), rlimits
otherwise; CPU time and file size always as rlimits; output bytes and workspace
disk are watched by the run's supervisor (app/executions.py). The hub sets the
rlimits and the cgroups on the run's first process while it waits to start
(app/spawn.py), so no extra program runs before bwrap.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("agented.sandbox")

MiB = 1024 * 1024
# Defaults for an agent that sets no limits of its own (AGENTED_LIMIT_* override them).
LIMIT_FIELDS = ("memory_mb", "processes", "cpu_s", "output_mb", "disk_mb")
# /tmp is memory: bounded by the workspace disk limit, and never above this.
TMP_MAX_BYTES = 1024 * MiB


@dataclass(frozen=True)
class Limits:
    memory_mb: int
    processes: int
    cpu_s: int
    output_mb: int
    disk_mb: int


def limits_for(agent_limits: dict[str, Any] | None, cfg: dict) -> Limits:
    """An agent's own limits over the configured defaults."""
    own = agent_limits or {}
    return Limits(**{f: int(own.get(f) or cfg[f"LIMIT_{f.upper()}"]) for f in LIMIT_FIELDS})


# --- what the run may see ---------------------------------------------------------


def hidden_paths(cfg: dict) -> list[str]:
    """Paths that must not exist inside a run: the hub's data, secrets and sockets."""
    paths = [cfg["DATA_DIR"], cfg["WORKSPACES_DIR"], cfg["HOMES_DIR"], "/run", "/var/run"]
    if cfg.get("BACKUP_DIR"):
        paths.append(cfg["BACKUP_DIR"])
    home = os.path.expanduser("~")
    if home not in ("/", ""):
        paths.append(home)  # the operator's logins, keys and tokens
    paths += cfg.get("SANDBOX_HIDE") or []
    out = []
    for p in paths:
        real = os.path.realpath(p)
        if real != "/" and os.path.exists(real) and real not in out:
            out.append(real)
    return out


def _secret_files(cfg: dict) -> list[str]:
    """Files outside the hidden places that hold the hub's secrets: its env files and
    the GitHub App's private key (with it a run could mint tokens for every repository)."""
    files = [os.environ.get("AGENTED_ENV_FILE") or ".env", "/etc/agented.env",
             cfg.get("GITHUB_APP_PRIVATE_KEY_FILE") or ""]  # fmt: skip
    return [os.path.realpath(f) for f in files if f and os.path.isfile(f)]


def visible_again(cfg: dict) -> list[str]:
    """Read-only paths inside hidden ones that runs need: the hub's Python, DNS, extras."""
    paths = [sys.base_prefix, sys.prefix, "/run/systemd/resolve", *(cfg.get("SANDBOX_READ") or [])]
    return [os.path.realpath(p) for p in paths if os.path.exists(p)]


def program_dirs(program: str, path_env: str) -> list[str]:
    """Where the run's program lives (its folder, and its symlink's target folder): a CLI
    installed under a hidden place or under /tmp must still be found inside."""
    found = shutil.which(program, path=path_env) if os.sep not in program else program
    if not found or not os.path.isabs(found):
        return []
    return sorted({os.path.dirname(found), os.path.dirname(os.path.realpath(found))})


def _exposes_secrets(path: str, cfg: dict) -> bool:
    """True if showing `path` would show the data dir, workspaces, homes or backups."""
    secret = [cfg["DATA_DIR"], cfg["WORKSPACES_DIR"], cfg["HOMES_DIR"], cfg.get("BACKUP_DIR")]
    for place in filter(None, secret):
        place = os.path.realpath(place)
        inside = path == place or path.startswith(place + "/")
        if inside or place.startswith(path.rstrip("/") + "/"):
            return True
    return False


def bwrap_argv(
    argv: list[str], *, workspace: str, home: str, cfg: dict, network: bool, limits: Limits,
    read: tuple[str, ...] = (),
) -> list[str]:  # fmt: skip
    """The bubblewrap command line that runs argv in `workspace` with HOME=`home`.

    `read`: more paths the run may read wherever they are (its repository's objects).
    """
    bwrap = shutil.which("bwrap") or "bwrap"
    args = [bwrap, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc",
            "--unshare-uts", "--unshare-cgroup-try", "--ro-bind", "/", "/",
            "--dev", "/dev", "--proc", "/proc"]  # fmt: skip
    if not network:
        args.append("--unshare-net")
    if os.geteuid() == 0:
        args += ["--cap-drop", "ALL"]  # root inside would otherwise keep its capabilities
    # A private /tmp first: hidden places under /tmp are then hidden inside it too.
    tmp_bytes = str(min(limits.disk_mb * MiB, TMP_MAX_BYTES))
    args += ["--size", tmp_bytes, "--tmpfs", "/tmp"]
    hidden = sorted(hidden_paths(cfg), key=len)
    for path in hidden:
        args += ["--tmpfs", path]
    for path in _secret_files(cfg):
        args += ["--ro-bind", "/dev/null", path]
    masked = ["/tmp", *hidden]
    for path in visible_again(cfg):
        inside = any(path == h or path.startswith(h + "/") for h in masked)
        if inside and not _exposes_secrets(path, cfg):
            args += ["--ro-bind", path, path]
    for path in read:
        if not _exposes_secrets(path, cfg):
            args += ["--ro-bind", path, path]
    args += ["--bind", home, home, "--bind", workspace, workspace]
    # Hidden places read-only (the run's own places stay writable inside them).
    for path in hidden:
        args += ["--remount-ro", path]
    return [*args, "--chdir", workspace, "--setenv", "HOME", home, "--setenv", "TMPDIR", "/tmp",
            "--", *argv]  # fmt: skip


def rlimits(limits: Limits, cgroups: bool) -> list[tuple[int, tuple[int, int]]]:
    """The rlimits a run starts with: what cgroups do not already bound."""
    disk = limits.disk_mb * MiB
    # The hard CPU limit a little above the soft one: SIGXCPU first, which says why.
    wanted = [(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 5)),
              (resource.RLIMIT_FSIZE, (disk, disk))]  # fmt: skip
    if not cgroups:
        # RLIMIT_DATA, not AS: node reserves far more address space than it uses.
        memory = limits.memory_mb * MiB
        wanted += [(resource.RLIMIT_DATA, (memory, memory)),
                   (resource.RLIMIT_NPROC, (limits.processes, limits.processes))]  # fmt: skip
    # Never above the hub's own hard limit: raising one takes a privilege the hub
    # lacks, and the run inherits that limit anyway.
    out = []
    for which, (soft, hard) in wanted:
        ceiling = resource.getrlimit(which)[1]
        if ceiling != resource.RLIM_INFINITY:
            soft, hard = min(soft, ceiling), min(hard, ceiling)
        out.append((which, (soft, hard)))
    return out


def command(
    argv: list[str], *, workspace: str, home: str, cfg: dict, network: bool, limits: Limits,
    read: tuple[str, ...] = (),
) -> list[str]:  # fmt: skip
    """The argv of a run: argv under bwrap, or argv itself with the sandbox off. Its
    rlimits (`rlimits`) and cgroup (RunCgroup.procs_files) are applied by spawn."""
    if cfg["SANDBOX"] == "off":
        return argv
    return bwrap_argv(argv, workspace=workspace, home=home, cfg=cfg, network=network,
                      limits=limits, read=read)  # fmt: skip


# --- is the sandbox usable? ---------------------------------------------------------

_status: dict[str, Any] = {"reason": None, "checked_at": 0.0, "enforced": None}


def probe(cfg: dict) -> str | None:
    """Start one empty sandbox; return why runs cannot start, or None when they can."""
    if cfg["SANDBOX"] == "off":
        return None
    if shutil.which("bwrap") is None:
        return ("bubblewrap is not installed (Debian package bubblewrap); runs wait until it"
                " is, or set AGENTED_SANDBOX=off to run agents unsandboxed")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="agented-probe-") as tmp:
        limits = limits_for(None, cfg)
        argv = bwrap_argv(["/bin/true"], workspace=tmp, home=tmp, cfg=cfg, network=True,
                          limits=limits)  # fmt: skip
        try:
            done = subprocess.run(argv, capture_output=True, timeout=20, env={"PATH": os.defpath})
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bubblewrap cannot start a sandbox: {exc}"
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip().splitlines()
        return f"bubblewrap cannot start a sandbox: {said[-1] if said else done.returncode}"
    return None


def refresh(cfg: dict) -> str | None:
    """Probe again and remember the answer (the scheduler asks `blocked()`)."""
    reason = probe(cfg)
    if reason != _status["reason"]:
        if reason:
            log.error("runs cannot start: %s", reason)
        else:
            log.info("sandbox works: runs can start")
    _status.update(reason=reason, checked_at=time.time())
    return reason


def blocked() -> str | None:
    """Why local runs wait now (None: they may start)."""
    return _status["reason"]


def checked_at() -> float:
    return float(_status["checked_at"])


def note_enforcement(text: str) -> None:
    _status["enforced"] = text


def enforced() -> str | None:
    """How this worker isolates and limits runs (None before the scheduler started)."""
    return _status["enforced"]


# --- cgroups -----------------------------------------------------------------------


@dataclass(frozen=True)
class Cgroups:
    """Where this process may create run cgroups: `dirs` by controller."""

    version: int
    dirs: dict[str, Path]

    def describe(self) -> str:
        return f"cgroup v{self.version} (memory, pids)"

    def sweep(self, older_than_s: float = 600) -> None:
        """Remove empty run cgroups a killed hub left behind. Only old ones: another
        hub on this machine may have made one a moment ago and not entered it yet;
        a cgroup that still holds a process cannot be removed."""
        cutoff = time.time() - older_than_s
        for base in set(self.dirs.values()):
            with contextlib.suppress(OSError):
                for child in base.iterdir():
                    if child.name.startswith("task-") and child.stat().st_ctime < cutoff:
                        with contextlib.suppress(OSError):
                            child.rmdir()


def _own_cgroups() -> dict[str, str]:
    found = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            found[c] = path
    return found


def _writable_dir(base: Path) -> bool:
    probe_dir = base / f"probe-{os.getpid()}"
    try:
        probe_dir.mkdir(exist_ok=True)
        probe_dir.rmdir()
        return True
    except OSError:
        return False


def detect_cgroups() -> Cgroups | None:
    """Find cgroups we may write: v2 delegated to us, or v1 memory and pids; else None."""
    root = Path("/sys/fs/cgroup")
    try:
        own = _own_cgroups()
    except OSError:
        return None
    if (root / "cgroup.controllers").exists() and "" in own:
        return _detect_v2(root / own[""].lstrip("/"))
    dirs: dict[str, Path] = {}
    for controller in ("memory", "pids"):
        if controller not in own:
            return None
        base = root / controller / own[controller].lstrip("/") / "agented"
        with contextlib.suppress(OSError):
            base.mkdir(exist_ok=True)
        if not _writable_dir(base):
            return None
        dirs[controller] = base
    found = Cgroups(1, dirs)
    found.sweep()
    return found


def _detect_v2(own: Path) -> Cgroups | None:
    # No process may sit in a cgroup whose controllers are handed to children, so
    # the hub's processes move into a `hub` leaf and runs go under `runs`.
    try:
        if "memory" not in (own / "cgroup.controllers").read_text().split():
            return None
        runs = own / "runs"
        if not (own / "hub").exists():
            (own / "hub").mkdir()
        for pid in (own / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (own / "hub" / "cgroup.procs").write_text(pid)
        (own / "cgroup.subtree_control").write_text("+memory +pids")
        runs.mkdir(exist_ok=True)
        (runs / "cgroup.subtree_control").write_text("+memory +pids")
    except OSError:
        return None
    if not _writable_dir(runs):
        return None
    found = Cgroups(2, {"memory": runs, "pids": runs})
    found.sweep()
    return found


class RunCgroup:
    """The cgroup(s) of one run: made with its limits, read for the reason, removed."""

    def __init__(self, cgroups: Cgroups, name: str, limits: Limits) -> None:
        self.version = cgroups.version
        self.paths = sorted({d / name for d in cgroups.dirs.values()})
        memory = str(limits.memory_mb * MiB)
        for path in self.paths:
            path.mkdir(exist_ok=True)
        if self.version == 2:
            path = self.paths[0]
            (path / "memory.max").write_text(memory)
            with contextlib.suppress(OSError):
                (path / "memory.swap.max").write_text("0")
            (path / "pids.max").write_text(str(limits.processes))
        else:
            (cgroups.dirs["memory"] / name / "memory.limit_in_bytes").write_text(memory)
            with contextlib.suppress(OSError):
                (cgroups.dirs["memory"] / name / "memory.memsw.limit_in_bytes").write_text(memory)
            (cgroups.dirs["pids"] / name / "pids.max").write_text(str(limits.processes))

    def procs_files(self) -> list[str]:
        return [str(p / "cgroup.procs") for p in self.paths]

    def _counter(self, filename: str, key: str) -> int:
        for path in self.paths:
            with contextlib.suppress(OSError):
                for line in (path / filename).read_text().splitlines():
                    name, _, value = line.partition(" ")
                    if name == key:
                        return int(value)
        return 0

    def exceeded(self) -> str | None:
        """Which limit the run hit, if any."""
        if self._counter("memory.events", "oom_kill") or self._counter("memory.oom_control",
                                                                       "oom_kill"):  # fmt: skip
            return "memory"
        if self._counter("pids.events", "max"):
            return "processes"
        return None

    def kill_and_remove(self) -> None:
        """SIGKILL whatever is left inside, then remove the cgroups."""
        # Most runs' last processes are gone within a few ms of the leader: look again
        # soon, then less often (about 1 s in all).
        for pause in (0.001, 0.002, 0.004, 0.008, 0.016, *[0.02] * 48):
            alive = False
            for path in self.paths:
                with contextlib.suppress(OSError):
                    for pid in (path / "cgroup.procs").read_text().split():
                        alive = True
                        with contextlib.suppress(OSError):
                            os.kill(int(pid), signal.SIGKILL)
            if not alive:
                break
            time.sleep(pause)
        for path in self.paths:
            with contextlib.suppress(OSError):
                path.rmdir()


def enforcement(cfg: dict, cgroups: Cgroups | None) -> str:
    """Say in one line how runs are isolated and limited on this machine."""
    if cfg["SANDBOX"] == "off":
        where = "no sandbox (AGENTED_SANDBOX=off)"
    else:
        where = "bubblewrap"
    limits = cgroups.describe() if cgroups else "rlimits (no writable cgroups)"
    return f"{where}; limits by {limits}"


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children files of /proc), deepest last."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            for task in os.listdir(f"/proc/{parent}/task"):
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    kids = [int(k) for k in f.read().split()]
                found += kids
                todo += kids
        except OSError:
            continue
    return found
