"""Run isolation (issue 12): what a prompt-injected agent tries, under real bubblewrap.

Each test gives a shell agent the commands an injected agent would run and
checks, from outside, that they reached nothing beyond the run's workspace.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pytest

from tests.pipeline_helpers import wait_for
from tests.test_execution import FAST, logs, make_agent, submit, task, wait_state

PY = sys.executable
WEBHOOK_SECRET = "gh-secret-that-runs-must-never-see"


@pytest.fixture
def hub(live_server):
    srv = live_server({**FAST, "GITHUB_WEBHOOK_SECRET": WEBHOOK_SECRET})
    srv.keys["admin"] = srv.make_key("admin")
    return srv


def run_sh(srv, script: str, name: str = "probe", **extra) -> tuple[dict, str]:
    make_agent(srv, name, ["sh", "-c", script], **extra)
    task_id = submit(srv, name)
    done = wait_state(srv, task_id, "succeeded", "dead")
    return done, "\n".join(line["text"] for line in logs(srv, task_id))


def worker_pid(srv) -> int:
    children = open(f"/proc/{srv.proc.pid}/task/{srv.proc.pid}/children").read().split()
    return int(children[0])


def test_it_hides_the_secret_key_and_the_database_from_a_run(hub):
    data = hub.data_dir
    secret = (data / "secret_key").read_text().strip()
    script = (f"cat {data}/secret_key; ls -la {data}; head -c 100 {data}/agented.db;"
              f" ls {data}/backups; echo done")  # fmt: skip
    done, out = run_sh(hub, script)
    assert done["state"] == "succeeded", out
    assert secret not in out
    assert "SQLite format" not in out
    listed = [line for line in out.splitlines() if not line.startswith(("cat:", "head:", "ls:"))]
    assert not any("agented.db" in line or "secret_key" in line for line in listed), listed
    # Not merely unreadable: inside the sandbox these files do not exist.
    assert f"head: cannot open '{data}/agented.db' for reading: No such file" in out


def test_it_shows_no_hub_process_and_no_hub_environment(hub):
    pid = worker_pid(hub)
    pids = "ls /proc | grep -E '^[0-9]+$' | tr '\\n' ' '; echo"
    script = f"cat /proc/{pid}/environ; echo; {pids}; env"
    done, out = run_sh(hub, script)
    assert done["state"] == "succeeded", out
    assert WEBHOOK_SECRET not in out
    pid_line = next(line for line in out.splitlines() if line.strip().split(" ")[0] == "1")
    pids = [int(p) for p in pid_line.split()]
    assert pid not in pids and hub.proc.pid not in pids
    assert max(pids) < 20  # a new PID namespace: only the run's own few processes


def test_it_cannot_write_outside_its_workspace_and_home(hub, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    data = hub.data_dir
    targets = [outside / "x", data / "agented.db", data / "x", "/etc/agented-x", "/usr/x"]
    script = "; ".join(f"(echo pwned > {t}) 2>/dev/null && echo WROTE {t}" for t in targets)
    script += "; echo ok > ws-file && echo ws-ok; echo ok > /tmp/t && echo tmp-ok"
    script += '; echo kept > "$HOME/login" && echo home-ok: $HOME'
    done, out = run_sh(hub, script)
    assert done["state"] == "succeeded", out
    assert "WROTE" not in out
    assert "ws-ok" in out and "tmp-ok" in out and "home-ok" in out
    assert not (outside / "x").exists() and not (data / "x").exists()
    home = next(line for line in out.splitlines() if line.startswith("home-ok"))
    # The agent's own HOME, beside the hub's data dir rather than in it.
    assert home.endswith(f"{hub.data_dir}-homes/probe")


def test_it_keeps_an_agents_home_between_runs(hub):
    make_agent(
        hub, "writer", ["sh", "-c", 'cat "$HOME/count" 2>/dev/null; echo x >> "$HOME/count"']
    )
    first = submit(hub, "writer")
    wait_state(hub, first, "succeeded")
    second = submit(hub, "writer")
    wait_state(hub, second, "succeeded")
    assert [line["text"] for line in logs(hub, second)] == ["x"]
    # Another agent has a home of its own.
    _, out = run_sh(hub, 'cat "$HOME/count" 2>&1; echo end', name="other")
    assert out.splitlines()[-1] == "end" and "x" not in out.splitlines()


def test_it_cannot_reach_another_tasks_workspace(hub):
    make_agent(hub, "first", ["sh", "-c", "echo private > note; echo stored"])
    first = submit(hub, "first")
    ws = wait_state(hub, first, "succeeded")["attempt_list"][0]["workspace"]
    done, out = run_sh(hub, f"cat {ws}/note; ls {os.path.dirname(ws)}")
    assert "private" not in out
    assert out.splitlines()[-1] == "task-2"  # only its own workspace is there


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@e",
                           *args], check=True, capture_output=True, text=True)  # fmt: skip


def test_it_cannot_plant_a_hook_in_the_agents_repository(hub, tmp_path):
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "README").write_text("hello\n")
    git(repo, "add", "README")
    git(repo, "commit", "-qm", "init")
    marker = tmp_path / "hook-ran"
    hook = f"#!/bin/sh\ntouch {marker}\n"
    script = (
        f"printf '{hook}' > .git/hooks/post-checkout; chmod +x .git/hooks/post-checkout;"
        f" git config core.hooksPath /tmp; (printf '{hook}' > {repo}/.git/hooks/post-checkout)"
        f" 2>/dev/null && echo PLANTED; (git -C {repo} config core.fsmonitor /bin/true)"
        " 2>/dev/null && echo CONFIGURED; git log --oneline | wc -l"
    )
    make_agent(hub, "steered", ["sh", "-c", script], workdir_policy="worktree",
               repository=str(repo))  # fmt: skip
    task_id = submit(hub, "steered")
    done = wait_state(hub, task_id, "succeeded", "dead")
    out = [line["text"] for line in logs(hub, task_id)]
    assert done["state"] == "succeeded", out
    assert "PLANTED" not in out and "CONFIGURED" not in out
    assert out[-1].strip() == "1"  # git works in the run's own clone
    assert not (repo / ".git" / "hooks" / "post-checkout").exists()
    assert "fsmonitor" not in (repo / ".git" / "config").read_text()
    # The next task's clone runs no hook, with the hub's rights or any other.
    again = submit(hub, "steered")
    wait_state(hub, again, "succeeded", "dead")
    assert not marker.exists()


def test_it_runs_the_hubs_git_without_the_repositorys_hooks(tmp_path):
    from app import gitcmd

    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "f").write_text("x")
    git(repo, "add", "f")
    git(repo, "commit", "-qm", "init")
    marker = tmp_path / "ran"
    hook = repo / ".git" / "hooks" / "post-checkout"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
    hook.chmod(0o755)
    gitcmd.run(["clone", "--quiet", "--shared", "--", str(repo), str(tmp_path / "clone")])
    git(tmp_path / "clone", "checkout", "-q", "-b", "other")  # plain git would run it here
    marker.unlink(missing_ok=True)
    gitcmd.run(["checkout", "-q", "-b", "third"], cwd=str(repo))
    assert not marker.exists()


def limited(srv, name, script, **limits):
    make_agent(srv, name, [PY, "-c", script], limits=limits)
    task_id = submit(srv, name, max_attempts=1, timeout_s=60)
    return wait_state(srv, task_id, "dead", "succeeded", timeout=60)


FORK = """
import subprocess, time
kids = []
for i in range(200):
    try:
        kids.append(subprocess.Popen(["sleep", "30"]))
    except OSError as exc:
        print("fork refused after", i, exc, flush=True)
        break
time.sleep(30)
"""


def test_it_stops_a_fork_bomb_at_the_process_limit(hub):
    done = limited(hub, "forker", FORK, processes=20)
    assert done["state"] == "dead"
    assert "processes limit (20 processes)" in done["last_error"]


def test_it_stops_a_run_over_its_memory_limit(hub):
    hog = "b = bytearray(512 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096])"
    done = limited(hub, "hog", hog, memory_mb=64)
    assert done["state"] == "dead"
    assert done["attempt_list"][0]["exit_code"] != 0


def test_it_stops_a_run_over_its_cpu_time(hub):
    done = limited(hub, "spinner", "while True: pass", cpu_s=1)
    assert done["state"] == "dead"
    assert "CPU time limit (1 s)" in done["last_error"]


def test_it_stops_a_run_over_its_output_limit(hub):
    done = limited(hub, "chatty", "import sys\nwhile True: sys.stdout.write('y' * 4096 + '\\n')",
                   output_mb=1)  # fmt: skip
    assert done["state"] == "dead"
    assert "output limit (1 MB)" in done["last_error"]


def test_it_stops_a_run_over_its_workspace_disk(hub):
    script = (
        "import time\nfor i in range(100):\n"
        "    open(f'f{i}', 'wb').write(b'x' * 1024 * 1024)\ntime.sleep(60)"
    )
    done = limited(hub, "filler", script, disk_mb=8)
    assert done["state"] == "dead"
    assert "disk limit (8 MB)" in done["last_error"] or "file size" in done["last_error"]


def test_it_keeps_tasks_waiting_while_bubblewrap_is_missing(live_server):
    srv = live_server({**FAST, "PATH": "/nonexistent"})
    key = srv.make_key("admin")
    srv.keys["admin"] = key
    make_agent(srv, "echo", ["/bin/cat"])
    task_id = submit(srv, "echo", "hi")
    waiting = wait_for(lambda: task(srv, task_id).get("waiting_reason"))
    assert "bubblewrap is not installed" in waiting
    assert task(srv, task_id)["state"] == "queued"
    found = srv.cli("diagnose", "--json")
    sandbox_check = next(c for c in json.loads(found.stdout)["checks"] if c["name"] == "sandbox")
    assert sandbox_check["level"] == "fail"


def test_it_warns_on_every_page_when_the_sandbox_is_off(live_server):
    srv = live_server({**FAST, "AGENTED_SANDBOX": "off"})
    for path in ("/signin", "/health"):
        status, _, body = srv.request("GET", path)
        assert "runs are not sandboxed" in body.decode().lower(), path
    found = srv.cli("diagnose", "--json")
    sandbox_check = next(c for c in json.loads(found.stdout)["checks"] if c["name"] == "sandbox")
    assert sandbox_check["level"] == "warn"


def test_it_asks_a_cli_for_its_version_without_the_hubs_secrets(tmp_path, monkeypatch):
    from app.dashboard import clihealth

    cli = tmp_path / "fake-cli"
    cli.write_text("#!/bin/sh\nenv | grep -c -e GITHUB_WEBHOOK_SECRET -e SECRET_KEY\n")
    cli.chmod(0o755)
    monkeypatch.setenv("GITHUB_WEBHOOK_SECRET", WEBHOOK_SECRET)
    monkeypatch.setenv("SECRET_KEY", "k" * 32)
    found = clihealth.check("fake", {"bin": str(cli), "env": [], "files": []}, set())
    assert found["version"] == "0"  # neither variable reached the program


def test_it_answers_while_a_run_floods_its_output(hub):
    flood = "import sys\nwhile True: sys.stdout.write('{\"type\": \"x\"}' + 'y' * 4096 + '\\n')"
    make_agent(hub, "flood", [PY, "-c", flood], limits={"output_mb": 10_000})
    task_id = submit(hub, "flood", max_attempts=1, timeout_s=120)
    wait_state(hub, task_id, "running")
    wait_for(lambda: len(logs(hub, task_id)) > 100)  # the pipe is full and being read
    for _ in range(20):  # the readers leave the loop turns for everyone else
        assert hub.request("GET", "/health/live", timeout=10)[0] == 200
    # The cancel is a write: the writer thread gets the GIL between the readers' turns.
    headers = {"X-API-Key": hub.keys["admin"]}
    cancelled = hub.request("POST", f"/api/v1/tasks/{task_id}/cancel", headers=headers, timeout=120)
    assert cancelled[0] in (200, 202)
    assert wait_state(hub, task_id, "cancelled", timeout=120)["state"] == "cancelled"


def test_it_never_shows_the_hubs_data_through_a_programs_folder(tmp_path):
    from app import sandbox

    data = tmp_path / "data"
    (data / "bin").mkdir(parents=True)
    cfg = {"SANDBOX": "bwrap", "DATA_DIR": data, "WORKSPACES_DIR": data / "workspaces",
           "HOMES_DIR": tmp_path / "data-homes", "BACKUP_DIR": "", "SANDBOX_HIDE": [],
           "SANDBOX_READ": []}  # fmt: skip
    limits = sandbox.limits_for(None, {f"LIMIT_{f.upper()}": 1 for f in sandbox.LIMIT_FIELDS})
    tools = tmp_path / "tools"
    tools.mkdir()
    argv = sandbox.bwrap_argv(["x"], workspace=str(tmp_path / "ws"), home=str(tmp_path / "h"),
                              cfg=cfg, network=True, limits=limits,
                              read=(str(tmp_path), str(data / "bin"), str(tools)))  # fmt: skip
    bound = [argv[i + 1] for i, a in enumerate(argv) if a == "--ro-bind"]
    assert str(tools) in bound  # a program's own folder is shown, read-only
    assert str(tmp_path) not in bound and str(data / "bin") not in bound  # never the data


def test_it_sweeps_empty_run_cgroups_a_killed_hub_left_behind():
    from app import sandbox

    cgroups = sandbox.detect_cgroups()
    assert cgroups is not None, "this machine lets the hub create cgroups (the limits tests too)"
    limits = sandbox.Limits(64, 8, 10, 1, 1)
    left = sandbox.RunCgroup(cgroups, f"task-0-0-{os.urandom(4).hex()}", limits)
    busy = sandbox.RunCgroup(cgroups, f"task-0-0-{os.urandom(4).hex()}", limits)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        for procs in busy.procs_files():
            with open(procs, "w") as f:
                f.write(str(sleeper.pid))
        cgroups.sweep(older_than_s=0)
        assert not any(p.exists() for p in left.paths)
        assert all(p.exists() for p in busy.paths)  # a cgroup in use is never removed
    finally:
        sleeper.kill()
        sleeper.wait()
        busy.kill_and_remove()


@pytest.fixture
def outside_dir():
    """A folder outside every place a run cannot see (a run has its own /tmp)."""
    import shutil
    import tempfile

    path = tempfile.mkdtemp(dir="/var/tmp", prefix="agented-test-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_it_hides_the_github_app_key_from_a_run(live_server, outside_dir):
    from pathlib import Path

    from tests.fakes.github_api import make_app_key

    key = Path(outside_dir) / "app.pem"
    key.write_bytes(make_app_key()[0])
    srv = live_server({**FAST, "AGENTED_GITHUB_APP_ID": "1",
                       "AGENTED_GITHUB_APP_PRIVATE_KEY_FILE": str(key)})  # fmt: skip
    srv.keys["admin"] = srv.make_key("admin")
    done, out = run_sh(srv, f"cat {key}; echo read")
    assert done["state"] == "succeeded", out
    assert "PRIVATE KEY" not in out and "read" in out.splitlines()


def test_it_sets_rlimits_no_higher_than_the_hubs_own_hard_limits():
    # In a child process: lowering this process's hard limit could not be undone.
    script = """
import json, resource
from app import sandbox
resource.setrlimit(resource.RLIMIT_CPU, (50, 50))
limits = sandbox.Limits(memory_mb=64, processes=20, cpu_s=3600, output_mb=1, disk_mb=8)
print(json.dumps({which: pair for which, pair in sandbox.rlimits(limits, cgroups=False)}))
"""
    out = subprocess.run([PY, "-c", script], capture_output=True, text=True, check=True).stdout
    got = {int(which): tuple(pair) for which, pair in json.loads(out).items()}
    assert got == {
        resource.RLIMIT_CPU: (50, 50),  # asked for 3600 (soft) and 3605 (hard)
        resource.RLIMIT_FSIZE: (8 * 1024 * 1024, 8 * 1024 * 1024),
        resource.RLIMIT_DATA: (64 * 1024 * 1024, 64 * 1024 * 1024),
        resource.RLIMIT_NPROC: (20, 20),
    }
