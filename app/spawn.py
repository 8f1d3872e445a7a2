"""Start an attempt's process cheaply: glibc's posix_spawn, reaped by the gevent loop.

gevent.subprocess forks the whole worker (copying a large process's page tables)
and runs Python in the child until exec: milliseconds of the one worker's CPU
per task (issue 4). posix_spawn uses CLONE_VFORK instead: the child borrows the
parent's memory until it execs. Python 3.11's os.posix_spawn has no chdir and
no closefrom file action, so this calls glibc's through ctypes. Where glibc (or
those calls) is missing, `spawn` falls back to gevent.subprocess.Popen, which
does the same things the slow way.

posix_spawn itself runs in the threadpool: the calling thread waits until the
child has exec'd, 1.3 ms at the median and 19 ms at p99 on a busy 2-core machine
(issue 18), which on the loop stalled every request of the worker. The child
first runs `/bin/sh` at a gate: it waits for one line on its stdin, written
once the loop watches its pid, because the loop reaps any child that exits and
an unwatched child's exit status would be lost. While it waits, the hub sets
its rlimits and moves it into the run's cgroups (`_confine`); then the shell
execs argv, which starts with both. Done from the hub instead of by a `prlimit`
in front of argv, that is one exec fewer per run (bench/dispatch.py: the
children's CPU per run went from 5.2 to 3.5 ms).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import subprocess
from collections.abc import Sequence

import gevent
import gevent.event
import gevent.subprocess
from gevent.fileobject import FileObjectPosix

# <spawn.h> flags (glibc values; used only on glibc, see _load).
_SETSIGDEF, _SETSIGMASK, _SETSID = 0x04, 0x08, 0x80
# Opaque glibc structs: posix_spawnattr_t is 336 bytes and posix_spawn_file_actions_t
# 80 bytes on x86-64, sigset_t 128; generous buffers cover every architecture.
_STRUCT_BYTES = 1024
# The gate (see the module's docstring): `read` takes one line from a pipe byte by
# byte, so the prompt after it stays for argv. 125 when the hub went away first.
GATE = 'read _ || exit 125; exec "$@"'
# (resource, (soft, hard)) pairs, as resource.prlimit takes them.
Rlimits = Sequence[tuple[int, tuple[int, int]]]


def _load() -> ctypes.CDLL | None:
    if "CS_GNU_LIBC_VERSION" not in os.confstr_names:
        return None
    libc_version = os.confstr("CS_GNU_LIBC_VERSION") or ""
    if not libc_version.startswith("glibc "):
        return None
    major, minor = (int(x) for x in libc_version.split()[1].split(".")[:2])
    if (major, minor) < (2, 34):  # posix_spawn_file_actions_addclosefrom_np
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        for name in (
            "posix_spawn_file_actions_addchdir_np",
            "posix_spawn_file_actions_addclosefrom_np",
        ):
            getattr(libc, name)
    except (OSError, AttributeError):
        return None
    p = ctypes.c_void_p
    libc.posix_spawn.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_char_p, p, p, p, p]
    libc.posix_spawn_file_actions_adddup2.argtypes = [p, ctypes.c_int, ctypes.c_int]
    libc.posix_spawn_file_actions_addchdir_np.argtypes = [p, ctypes.c_char_p]
    libc.posix_spawn_file_actions_addclosefrom_np.argtypes = [p, ctypes.c_int]
    libc.posix_spawnattr_setflags.argtypes = [p, ctypes.c_short]
    return libc


_libc = _load()


class Child:
    """What a Run needs of a Popen: pid, the three pipes, wait() and returncode."""

    def __init__(self, pid: int, stdin: int, stdout: int, stderr: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._exited = gevent.event.Event()
        # Started before anything yields: the loop reaps the child only after this.
        self._watcher = gevent.get_hub().loop.child(pid, False)
        self._watcher.start(self._on_exit)
        # Non-blocking, cooperative pipe ends (as gevent.subprocess makes them).
        self.stdin = FileObjectPosix(stdin, "wb")
        self.stdout = FileObjectPosix(stdout, "rb")
        self.stderr = FileObjectPosix(stderr, "rb")

    def _on_exit(self) -> None:
        self._watcher.stop()
        status = self._watcher.rstatus
        if os.WIFSIGNALED(status):
            self.returncode = -os.WTERMSIG(status)
        else:
            self.returncode = os.WEXITSTATUS(status)
        self._exited.set()

    def wait(self, timeout: float | None = None) -> int | None:
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
        return self.returncode


def spawn(
    argv: list[str], env: dict[str, str], cwd: str, enter: Sequence[str] = (),
    rlimits: Rlimits = (),
) -> Child | gevent.subprocess.Popen:  # fmt: skip
    """Start argv in a new session in `cwd` with exactly `env`, stdio piped, no other
    fds, with `rlimits`, inside the cgroups whose cgroup.procs files `enter` lists:
    nothing of argv runs before all of them apply."""
    # Like exec*p with the child's environment (what subprocess does): PATH from `env`.
    # Looked up here, where a missing program is an OSError; the shell finds the same.
    _which(argv[0], env.get("PATH", os.defpath), cwd)
    unset = "" if "PWD" in env else "unset PWD; "  # the shell exports PWD: argv gets `env`
    gated = ["/bin/sh", "-c", unset + GATE, "sh", *argv]
    if _libc is None:
        return _popen(gated, env, cwd, enter, rlimits)
    ends = [*os.pipe(), *os.pipe(), *os.pipe()]  # stdin r/w, stdout r/w, stderr r/w
    if min(ends) < 3:  # fds 0-2 closed in this process: leave the juggling to subprocess
        for fd in ends:
            os.close(fd)
        return _popen(gated, env, cwd, enter, rlimits)
    in_r, in_w, out_r, out_w, err_r, err_w = ends
    hub = gevent.get_hub()
    hub.loop.install_sigchld()  # the loop's SIGCHLD handling, before any child can exit
    try:
        pid = hub.threadpool.apply(_start, (gated, env, cwd, (in_r, out_w, err_w), enter, rlimits))
    except BaseException:
        # A child left at its gate reads end of file there and exits unstarted.
        for fd in (in_w, out_r, err_r):
            os.close(fd)
        raise
    finally:
        for fd in (in_r, out_w, err_w):
            os.close(fd)
    child = Child(pid, in_w, out_r, err_r)
    # Watched now: it may run (and end). The pipe is empty, so this never blocks; a
    # child already killed has closed its end, and its watcher reports how it ended.
    with contextlib.suppress(BrokenPipeError):
        os.write(in_w, b"\n")
    return child


def _start(
    argv: list[str], env: dict[str, str], cwd: str, stdio, enter: Sequence[str], rlimits: Rlimits
) -> int:
    pid = _posix_spawn("/bin/sh", argv, env, cwd, stdio)
    _confine(pid, enter, rlimits)
    return pid


def _confine(pid: int, enter: Sequence[str], rlimits: Rlimits) -> None:
    """Set the rlimits of a child waiting at its gate and move it into its cgroups."""
    for which, limit in rlimits:
        resource.prlimit(pid, which, limit)
    for procs in enter:
        with open(procs, "w") as f:
            f.write(str(pid))


def _which(name: str, search: str, cwd: str) -> str:
    # Relative names are looked up from the child's directory, where exec runs.
    if os.sep in name:
        return os.path.join(cwd, name)
    for folder in search.split(os.pathsep):
        candidate = os.path.join(cwd, folder or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(2, "No such file or directory", name)


def _posix_spawn(path: str, argv: list[str], env: dict[str, str], cwd: str, stdio) -> int:
    lib = _libc
    if lib is None:  # spawn() checked; this says so to the type checker too
        raise OSError("glibc posix_spawn is not available")
    actions = ctypes.create_string_buffer(_STRUCT_BYTES)
    attr = ctypes.create_string_buffer(_STRUCT_BYTES)
    empty = ctypes.create_string_buffer(_STRUCT_BYTES)
    every = ctypes.create_string_buffer(_STRUCT_BYTES)
    lib.posix_spawn_file_actions_init(actions)
    lib.posix_spawnattr_init(attr)
    try:
        for fd, target in zip(stdio, range(len(stdio)), strict=True):
            _check(lib.posix_spawn_file_actions_adddup2(actions, fd, target))
        _check(lib.posix_spawn_file_actions_addchdir_np(actions, os.fsencode(cwd)))
        _check(lib.posix_spawn_file_actions_addclosefrom_np(actions, len(stdio)))  # close_fds
        # Nothing blocked, every signal at its default (Python ignores SIGPIPE).
        lib.sigemptyset(empty)
        lib.sigfillset(every)
        _check(lib.posix_spawnattr_setsigmask(attr, empty))
        _check(lib.posix_spawnattr_setsigdefault(attr, every))
        _check(lib.posix_spawnattr_setflags(attr, _SETSID | _SETSIGMASK | _SETSIGDEF))
        args = [os.fsencode(a) for a in argv]
        envp = [os.fsencode(k) + b"=" + os.fsencode(v) for k, v in env.items()]
        if any(b"\0" in x for x in (*args, *envp)):  # C strings would cut them silently
            raise ValueError("embedded null byte")
        c_argv = (ctypes.c_char_p * (len(args) + 1))(*args, None)
        c_envp = (ctypes.c_char_p * (len(envp) + 1))(*envp, None)
        pid = ctypes.c_int()
        _check(
            lib.posix_spawn(ctypes.byref(pid), os.fsencode(path), actions, attr, c_argv, c_envp),
            argv[0],
        )
        return pid.value
    finally:
        lib.posix_spawn_file_actions_destroy(actions)
        lib.posix_spawnattr_destroy(attr)


def _check(err: int, name: str | None = None) -> None:
    if err:
        raise OSError(err, os.strerror(err), name)


def _popen(
    argv: list[str], env: dict[str, str], cwd: str, enter: Sequence[str], rlimits: Rlimits
) -> gevent.subprocess.Popen:
    proc = gevent.subprocess.Popen(
        argv,
        stdin=gevent.subprocess.PIPE,
        stdout=gevent.subprocess.PIPE,
        stderr=gevent.subprocess.PIPE,
        cwd=cwd,
        env=env,
        start_new_session=True,
        close_fds=True,
    )
    try:
        gevent.get_hub().threadpool.apply(_confine, (proc.pid, enter, rlimits))
    except BaseException:
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            pipe.close()  # end of file at the gate: it exits unstarted
        raise
    # Popen watches its child from the start: the gate opens at once.
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.write(b"\n")
        proc.stdin.flush()
    return proc
