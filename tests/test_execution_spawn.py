"""app/spawn.py: what a started attempt gets, whichever way it is started."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import sys
from pathlib import Path

import gevent
import pytest

from app import spawn as spawn_mod
from app.spawn import spawn
from tests.pipeline_helpers import wait_for

PY = sys.executable
ENV = {"PATH": "/usr/bin:/bin", "AGENTED_TASK_ID": "7"}


@pytest.fixture(params=["posix_spawn", "popen"])
def how(request, monkeypatch):
    if request.param == "popen":
        monkeypatch.setattr(spawn_mod, "_libc", None)
    elif spawn_mod._libc is None:
        pytest.skip("this libc has no posix_spawn chdir/closefrom")
    return request.param


def run(argv, cwd, prompt=b"", env=ENV, rlimits=()):
    child = spawn(argv, dict(env), str(cwd), rlimits=rlimits)
    child.stdin.write(prompt)
    child.stdin.close()
    out = gevent.spawn(child.stdout.read)
    err = gevent.spawn(child.stderr.read)
    code = child.wait(timeout=30)
    return code, out.get(timeout=30), err.get(timeout=30), child.pid


def test_it_runs_argv_in_the_workspace_with_the_prompt_on_stdin(how, tmp_path):
    code, out, err, _ = run(["sh", "-c", "cat; pwd; echo oops >&2; exit 3"], tmp_path, b"hi\n")
    assert (code, out, err) == (3, f"hi\n{tmp_path}\n".encode(), b"oops\n")


def test_it_gives_the_child_its_own_session_and_only_the_given_environment(how, tmp_path):
    script = "import os; print(os.getsid(0), os.getpgid(0), os.getpid())"
    os.environ["AGENTED_SECRET_KEY_FOR_TEST"] = "leak"
    try:
        _, out, _, pid = run([PY, "-c", script], tmp_path)
        _, env, _, _ = run(["cat", "/proc/self/environ"], tmp_path)
    finally:
        del os.environ["AGENTED_SECRET_KEY_FOR_TEST"]
    assert out.split() == [str(pid).encode()] * 3
    assert sorted(env.split(b"\0")[:-1]) == [b"AGENTED_TASK_ID=7", b"PATH=/usr/bin:/bin"]


def test_it_passes_no_other_file_descriptors_and_default_signals(how, tmp_path):
    leaked = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(leaked, True)
    try:
        _, fds, _, _ = run(["ls", "/proc/self/fd"], tmp_path)
        _, status, _, _ = run(["cat", "/proc/self/status"], tmp_path)
    finally:
        os.close(leaked)
    assert sorted(int(fd) for fd in fds.split()) == [0, 1, 2, 3]  # 3: ls's own directory
    fields = dict(line.split(":\t") for line in status.decode().splitlines() if ":\t" in line)
    assert int(fields["SigIgn"], 16) & (1 << (signal.SIGPIPE - 1)) == 0
    assert int(fields["SigBlk"], 16) == 0


def test_it_reports_a_missing_program_and_a_signal_death(how, tmp_path):
    with pytest.raises(OSError):
        spawn(["no-such-program-here"], dict(ENV), str(tmp_path))
    child = spawn(["sleep", "30"], dict(ENV), str(tmp_path))
    with pytest.raises(Exception) as timed_out:
        child.wait(timeout=0.05)
    assert type(timed_out.value).__name__ == "TimeoutExpired"
    os.killpg(child.pid, signal.SIGKILL)
    assert child.wait(timeout=10) == -signal.SIGKILL


def test_it_finds_a_relative_path_entry_from_the_childs_directory(tmp_path):
    work = tmp_path / "work"
    (work / "bin").mkdir(parents=True)
    tool = work / "bin" / "tool"
    tool.write_text("#!/bin/sh\necho from the workspace\n")
    tool.chmod(0o755)
    assert spawn_mod._which("tool", "bin", str(work)) == str(work / "bin" / "tool")
    assert spawn_mod._which("./bin/tool", "", str(work)) == os.path.join(work, "./bin/tool")
    assert spawn_mod._which("/bin/sh", "", str(work)) == "/bin/sh"


def test_it_keeps_the_exit_status_of_children_that_end_at_once(how, tmp_path):
    # posix_spawn runs in the threadpool while the loop reaps whatever exits: each
    # child waits at its gate until its pid is watched, so no status is lost.
    children = [spawn(["sh", "-c", f"exit {n % 7}"], dict(ENV), str(tmp_path)) for n in range(60)]
    for child in children:
        child.stdin.close()
    assert [child.wait(timeout=30) for child in children] == [n % 7 for n in range(60)]


def test_it_starts_the_child_inside_the_given_cgroups(how, tmp_path):
    procs = tmp_path / "cgroup.procs"
    procs.write_text("")
    child = spawn(["true"], dict(ENV), str(tmp_path), [str(procs)])
    child.stdin.close()
    assert child.wait(timeout=30) == 0
    # A plain file stands in for cgroupfs: the hub wrote the child's pid into it
    # while the child waited at its gate.
    assert procs.read_text() == str(child.pid)


def test_it_starts_the_child_with_the_given_rlimits(how, tmp_path):
    limits = [(resource.RLIMIT_CPU, (7, 12)), (resource.RLIMIT_FSIZE, (1 << 20, 1 << 21))]
    _, out, _, _ = run(["cat", "/proc/self/limits"], tmp_path, rlimits=limits)
    rows = {line[:26].strip(): line[26:].split()[:2] for line in out.decode().splitlines()}
    assert rows["Max cpu time"] == ["7", "12"]
    assert rows["Max file size"] == [str(1 << 20), str(1 << 21)]


def cmdlines():
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            yield Path(f"/proc/{pid}/cmdline").read_bytes()


def test_it_never_runs_argv_when_its_cgroup_cannot_be_entered(how, tmp_path):
    marker = tmp_path / "ran"
    gone = tmp_path / "no-such-cgroup" / "cgroup.procs"
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError):
        spawn(["touch", str(marker)], dict(ENV), str(tmp_path), [str(gone)])
    # The child reads end of file at its gate and exits; until then its command line
    # names the marker (as the shell's, or as touch's had it got past the gate).
    wait_for(lambda: not any(str(marker).encode() in cmdline for cmdline in cmdlines()))
    assert not marker.exists()
    assert set(os.listdir("/proc/self/fd")) == before


def test_it_leaves_no_descriptor_open_when_a_start_fails(tmp_path):
    if spawn_mod._libc is None:
        pytest.skip("this libc has no posix_spawn chdir/closefrom")
    before = set(os.listdir("/proc/self/fd"))
    for _ in range(5):
        with pytest.raises(OSError):
            # The program exists, but the directory to start in does not.
            spawn(["true"], dict(ENV), str(tmp_path / "gone"))
    assert set(os.listdir("/proc/self/fd")) == before
