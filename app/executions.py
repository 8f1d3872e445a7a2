"""ExecutionService: the scheduler loop, one supervised run per attempt, crash recovery.

The scheduler greenlet starts a Run for every task app/scheduler.py claims. A
claim bumps the attempt number (the fencing token): every later write for that
attempt says `WHERE attempts = ?`, so a stale run can never overwrite a newer one.
Each run starts the agent's argv under bubblewrap (app/sandbox.py), in its own
process group with a filtered environment and within its limits
(app/run_limits.py), streams stdout/stderr lines to live subscribers as soon as they are
read and to the database in batches (app/runlog.py: a crash loses at most
~100 ms of log), and ends with one transaction that records the attempt, stores
the last lines and moves the task on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import gevent.subprocess
from flask import Flask

from app import (
    accounts,
    commands,
    db,
    events,
    gitcmd,
    github,
    instances,
    run_limits,
    runlog,
    sandbox,
    scheduler,
)
from app.agents import agent_secrets
from app.queue import ACTIVE, CANCELLABLE, RETRYABLE_STATES, transition, wait_for_work, wake
from app.spawn import spawn

log = logging.getLogger("agented.executions")

USAGE_LINE_MAX = 8 * 1024 * 1024

# The longest a reader keeps the event loop while its pipe stays full, and how
# long it then rests. A rest, not just a turn (sleep(0)): while a reader is
# runnable the loop never blocks, so the main thread never lets go of the GIL
# and the writer thread, which needs it between SQLite steps, waits up to the
# switch interval (5 ms) per row: a flooding run then held every write, a
# cancel too, for minutes.
READ_TURN_S = 0.005
READ_REST_S = 0.002
# Attempts of one task that may end at a usage limit without using up an attempt.
MAX_LIMITED = 24
# How often the sandbox is probed again while it cannot start runs.
SANDBOX_RETRY_S = 30.0

# Set by start(), in the worker, before any loop or run uses it.
_app: Flask = None  # type: ignore[assignment]
_stopping = False
_cgroups: sandbox.Cgroups | None = None
RUNS: dict[int, Run] = {}


def stopping() -> bool:
    return _stopping


def backoff(attempt: int, cfg: dict, rand: random.Random | None = None) -> float:
    """Seconds before retry number `attempt` (1-based): base x 2^(n-1), capped, jittered."""
    delay = min(cfg["BACKOFF_CAP_S"], cfg["BACKOFF_BASE_S"] * 2 ** (attempt - 1))
    jitter = cfg["BACKOFF_JITTER"]
    return max(0.0, delay * (1 + (rand or random).uniform(-jitter, jitter)))


# --- scheduling ---------------------------------------------------------------


def start(app: Flask) -> None:
    """Recover from the last run, then start the scheduler (called in the gunicorn worker).

    The cron clock is started after this, by app/triggers.py start_clock.
    """
    global _app, _cgroups
    _app = app
    _cgroups = sandbox.detect_cgroups()
    sandbox.refresh(app.config)
    sandbox.note_enforcement(sandbox.enforcement(app.config, _cgroups))
    log.info("run isolation: %s", sandbox.enforced())
    with app.app_context():
        if instances.runs_tasks(app.config):
            recover()
        instances.start(app.config, recover_attempts, stop_lost)
    if app.config["SCHEDULER"] and instances.runs_tasks(app.config):
        gevent.spawn(_scheduler_loop)


def _scheduler_loop() -> None:
    while not _stopping:
        wait_for_work(0.5)
        if sandbox.blocked():
            # Fail closed: without a working sandbox no local run starts; tasks wait
            # queued (their page, diagnose and an alert say why) until it works.
            if time.time() - sandbox.checked_at() > SANDBOX_RETRY_S:
                sandbox.refresh(_app.config)
            continue
        try:
            with _app.app_context():
                for claim in scheduler.claim_ready(_app.config):
                    RUNS[claim["task_id"]] = run = Run(claim)
                    gevent.spawn(run.main)
        except Exception:
            log.exception("scheduler pass failed")
            gevent.sleep(1)


# --- one run ------------------------------------------------------------------


def home_of(cfg: dict, name: str) -> Path:
    """Where the agent's own HOME is (CLI logins persist there), apart from the hub's data."""
    return Path(cfg["HOMES_DIR"]) / name


def agent_home(cfg: dict, name: str) -> str:
    """The agent's HOME, made when missing."""
    home = home_of(cfg, name)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    return str(home)


def repository_paths(agent) -> tuple[str, ...]:
    """What a run's own clone reads through its alternates: the repository, read-only."""
    repo = agent["repository"] if agent["workdir_policy"] == "worktree" else None
    return (os.path.realpath(repo),) if repo and os.path.isdir(repo) else ()


class Run:
    """Supervise one attempt of one task."""

    def __init__(self, claim: dict) -> None:
        self.task_id = claim["task_id"]
        self.attempt = claim["attempt"]
        self.agent_name = claim["agent"]
        self.cancel = gevent.event.Event()
        self.proc: Any = None
        self.log = runlog.RunLog(self.task_id, self.attempt, _app.config["DATABASE"])
        self.truncated = False
        self.rate_limited: tuple[bool, float | None] = (False, None)
        self.limit_kind: str | None = None
        self.sandboxed = False
        self.guard: run_limits.LimitGuard | None = None
        self.backend = ""
        self.account: str | None = None
        self.resume: str | None = None
        self.session_missing = False
        self.started_at = time.time()
        self.redact: list[str] = []
        self.deadline: float | None = None

    # The entry point: never raises; every outcome ends in one final transaction.
    def main(self) -> None:
        try:
            with _app.app_context():
                self._run()
        except Exception as exc:
            log.exception("run failed", extra={"task_id": self.task_id})
            self._finish("failed", None, f"internal error: {exc}", retryable=True)
        finally:
            RUNS.pop(self.task_id, None)
            self.log.end()
            wake()

    def _run(self) -> None:
        cfg = _app.config
        with db.reading(cfg["DATABASE"]) as conn:
            task = conn.execute("SELECT * FROM tasks WHERE id = ?", (self.task_id,)).fetchone()
            agent = conn.execute(
                "SELECT * FROM agents WHERE name = ?", (self.agent_name,)
            ).fetchone()
            # A crashed attempt may have left no session id: the latest one known.
            earlier = conn.execute(
                "SELECT json_extract(usage, '$.session_id') AS session FROM attempts"
                " WHERE task_id = ? AND number < ? AND agent = ?"
                " AND json_extract(usage, '$.session_id') IS NOT NULL"
                " ORDER BY number DESC LIMIT 1",
                (self.task_id, self.attempt, self.agent_name),
            ).fetchone()
        self.log.begin(task["log_seq"])
        if agent is None:
            return self._finish("failed", None, "the agent was deleted", retryable=False)
        if task["cancel_requested"]:
            return self._finish("cancelled", None, "cancelled before start")
        self.backend = agent["backend"]
        self.account = accounts.account_of(agent)
        # The session the agent's last attempt at this task left (its CLI keeps it
        # in the agent's HOME, keyed by the workspace, which the attempts share).
        self.resume = earlier["session"] if earlier else None
        try:
            spec = {
                "backend": agent["backend"],
                "model": agent["model"],
                "flags": json.loads(agent["flags"]),
                "command": json.loads(agent["command"]),
                "permissions": agent["permissions"],
            }
            commands.build_argv(spec, self.resume)  # refuse bad settings before any work
            secrets = agent_secrets(agent, cfg["SECRET_KEY"])
            env = commands.filtered_env(json.loads(agent["env_allow"]), secrets, os.environ)
            workspace = self._workspace(agent)
            home = agent_home(cfg, agent["name"])
        except Exception as exc:
            return self._finish("failed", None, f"cannot prepare the run: {exc}", retryable=False)
        # A GitHub issue's or pull request's task only (a dashboard task has an origin too).
        origin = json.loads(task["origin"]) if task["origin"] else {}
        if agent["github_token"] and origin.get("kind") == "github":
            env.update(self._github_token(cfg, origin))
        # A run printing its own credentials must not put them in the stored log.
        # (Values under 4 characters would garble every line and hide nothing.)
        passed = [v for k, v in env.items() if k in json.loads(agent["env_allow"])
                  and commands.CREDENTIAL_NAME.search(k)]  # fmt: skip
        self.redact = sorted({v for v in (*secrets.values(), *passed, env.get("GH_TOKEN", ""))
                              if len(v) >= 4}, key=len, reverse=True)  # fmt: skip
        env.update(commands.permission_env(agent["backend"], agent["permissions"]))
        env["HOME"] = home
        # Marks the children so recovery can tell our orphans from a reused pid.
        env["AGENTED_ATTEMPT"] = f"{self.task_id}:{self.attempt}"
        env["AGENTED_TASK_ID"] = str(self.task_id)
        self.sandboxed = cfg["SANDBOX"] != "off"
        while True:
            argv = commands.build_argv(spec, self.resume)
            if not self._start(agent, argv, env, workspace, home):
                return None
            ended = self._supervise(task, cfg)
            if not (self.resume and self.session_missing and ended[0] == "exited" and ended[1]):
                return self._conclude(task, *ended)
            # Only the CLI saying it has no such session starts a new one, and only
            # here: in the same workspace, within this attempt.
            self.log.line(
                "system",
                f"{self.backend} cannot resume session {self.resume}: starting a new session"
                " in the same workspace",
            )
            self.resume, self.session_missing, self.rate_limited = None, False, (False, None)

    def _before(self) -> dict[str, float]:
        """What earlier attempts recorded on the codex thread this one resumes.

        codex counts a resumed thread's usage from its start; the others count
        each run on its own.
        """
        if self.backend != "codex" or not self.resume:
            return {}
        with db.reading(_app.config["DATABASE"]) as conn:
            rows = conn.execute(
                "SELECT usage FROM attempts WHERE task_id = ? AND number < ?"
                " AND json_extract(usage, '$.session_id') = ?",
                (self.task_id, self.attempt, self.resume),
            ).fetchall()
        totals: dict[str, float] = {}
        for row in rows:
            for field, value in json.loads(row["usage"]).items():
                if field in commands.USAGE_FIELDS and isinstance(value, int | float):
                    totals[field] = totals.get(field, 0) + value
        return totals

    def _github_token(self, cfg, origin: dict) -> dict[str, str]:
        """A short-lived installation token for the task's repository, as GH_TOKEN.

        Only with a GitHub App (a token of the hub's own would reach every
        repository it can). Never stored or logged; without one the run goes on.
        """
        inst, repo = origin.get("installation_id"), str(origin.get("repo") or "")
        why = None
        if github.mode(cfg) != "app" or not inst or "/" not in repo:
            why = "no GitHub App installation for this task's repository"
        else:
            try:
                name = repo.split("/", 1)[1]
                token = github.installation_token(cfg, inst, (name,),
                                                  permissions=github.RUN_PERMISSIONS)  # fmt: skip
                return {"GH_TOKEN": token}
            except github.GitHubError as exc:
                why = str(exc)
        self.log.line("system", f"no GitHub token for this run: {why}")
        return {}

    def _start(self, agent, argv: list[str], env: dict, workspace: str, home: str) -> bool:
        """Start one process of this attempt in the sandbox; False when it must not run."""
        cfg = _app.config
        limits = sandbox.limits_for(json.loads(agent["limits"]), cfg)
        self.usage = commands.UsageTracker(agent["backend"], agent["model"], self._before())
        self.guard = guard = run_limits.LimitGuard(limits, None, workspace, self.cancel.set)
        try:
            if _cgroups is not None:
                # Unique: another hub on this machine may number its tasks alike.
                name = f"task-{self.task_id}-{self.attempt}-{os.urandom(4).hex()}"
                # mkdir in cgroupfs costs about a millisecond: not on the loop.
                pool = gevent.get_hub().threadpool
                guard.cgroup = pool.apply(sandbox.RunCgroup, (_cgroups, name, limits))
            full = sandbox.command(argv, workspace=workspace, home=home, cfg=cfg,
                                   network=bool(agent["network"]), limits=limits,
                                   read=(*repository_paths(agent),
                                         *sandbox.program_dirs(argv[0], env["PATH"])))  # fmt: skip
            # Own session (so its process group), only `env`, no other fds, stdio piped.
            enter = guard.cgroup.procs_files() if guard.cgroup is not None else ()
            rlimits = sandbox.rlimits(limits, guard.cgroup is not None)
            self.proc = spawn(full, env, workspace, enter, rlimits)
        except OSError as exc:
            guard.close()
            self._finish("failed", None, f"cannot start {argv[0]}: {exc}", retryable=False)
            return False
        if not self._mark_running(argv, workspace):
            self._kill_group(signal.SIGKILL)
            guard.close()
            return False
        return True

    def _workspace(self, agent) -> str:
        """The task's workspace: made for its first attempt, kept for the next ones."""
        base = _app.config["WORKSPACES_DIR"]
        path = base / f"task-{self.task_id}"
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.attempt > 1 and path.is_dir():
            return str(path)  # a retry continues the work where the last attempt left it
        shutil.rmtree(path, ignore_errors=True)
        if agent["workdir_policy"] == "worktree":
            # The task's own clone (objects shared read-only through alternates): a
            # run can change its clone's hooks and config, never the repository's.
            # Made aside and renamed: a clone cut short is never taken for a workspace.
            partial = base / f".task-{self.task_id}-{os.urandom(4).hex()}"
            try:
                gitcmd.run(["clone", "--quiet", "--shared", "--", agent["repository"],
                            str(partial)])  # fmt: skip
                partial.rename(path)
            finally:
                shutil.rmtree(partial, ignore_errors=True)
        else:
            path.mkdir()
        return str(path)

    def _mark_running(self, argv: list[str], workspace: str) -> bool:
        pid = self.proc.pid

        def mark(conn):
            # 'running' already when a resume failed and a new session starts.
            cur = conn.execute(
                "UPDATE tasks SET state = 'running', updated_at = ? WHERE id = ? AND attempts = ?"
                " AND state IN ('assigned', 'running') AND cancel_requested = 0",
                (time.time(), self.task_id, self.attempt),
            )
            if cur.rowcount != 1:
                return None  # cancelled (or re-claimed) between claim and start
            conn.execute(
                "UPDATE attempts SET state = 'running', pid = ?, pgid = ?, argv = ?, workspace = ?,"
                " resumed_session = ? WHERE task_id = ? AND number = ?",
                (pid, pid, json.dumps(argv), workspace, self.resume, self.task_id, self.attempt),
            )
            return transition(conn, self.task_id, "running", attempt=self.attempt, pid=pid,
                              resumed_session=self.resume)  # fmt: skip

        event = db.write(mark, _app.config["DATABASE"])
        if event is None:
            return False
        events.publish_all([event])
        return True

    def _supervise(self, task, cfg: dict) -> tuple[str, int | None, str | None]:
        """Follow the process to its end; return (outcome, exit code, limit it went over)."""
        guard = self.guard
        assert guard is not None  # made by _run before the process starts
        prompt = task["prompt"].encode()
        feeder = gevent.spawn(self._feed_stdin, prompt)
        readers = [
            gevent.spawn(self._read, self.proc.stdout, "stdout"),
            gevent.spawn(self._read, self.proc.stderr, "stderr"),
        ]
        self.log.start_flushing()
        watcher = gevent.spawn(guard.watch)
        # One deadline per attempt, also across a restart after a failed resume.
        deadline = self.deadline = self.deadline or time.monotonic() + task["timeout_s"]
        waiter = gevent.spawn(self.proc.wait)
        outcome = None
        while outcome is None:
            left = deadline - time.monotonic()
            # Wake at least every second to see a cancel made by another process
            # (the CLI writes cancel_requested straight to the database).
            gevent.wait([waiter, self.cancel], timeout=max(0.0, min(left, 1.0)), count=1)
            if waiter.ready():
                outcome = "exited"
            elif guard.over:
                outcome = "over_limit"
            elif self.cancel.is_set() or self._cancel_requested():
                outcome = "cancelled"
            elif time.monotonic() >= deadline:
                outcome = "timed_out"
        waiter.kill(block=False)
        watcher.kill(block=False)
        if outcome == "over_limit":
            self._stop_process(0)
        elif outcome != "exited":
            self._stop_process(cfg["KILL_GRACE_S"])
        # Whatever the leader did, nothing it started may outlive the attempt.
        self._kill_group(signal.SIGKILL)
        code = self.proc.returncode
        limit = guard.ended_over(code)
        guard.close()
        gevent.joinall(readers, timeout=5)
        gevent.killall([*readers, feeder], block=False)
        self.log.stop_flushing()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError):
                pipe.close()  # now, not when the garbage collector gets to them
        return outcome, code, (guard.reason(limit) if limit else None)

    def _conclude(self, task, outcome: str, code: int | None, over: str | None) -> None:
        """End the attempt: the last lines are stored by _finish, in the same transaction."""
        hit, reset = self.rate_limited
        # A usage limit the CLI reported, also when it waited on it until the timeout
        # (gemini waits out quotas inside the process), but not one it got past.
        limited = hit and not over and (outcome == "timed_out" or (outcome, code) != ("exited", 0))
        if over and outcome != "cancelled":
            self._finish("failed", code, over, retryable=False)
        elif outcome == "cancelled":
            self._finish("cancelled", code, "cancelled")
        elif limited:
            state = "timed_out" if outcome == "timed_out" else "failed"
            kind = self.limit_kind or "rate limit"
            self._finish(state, code, f"{self.backend} {kind}", limit=(reset, kind))
        elif outcome == "timed_out":
            self._finish("timed_out", code, f"timed out after {task['timeout_s']} s")
        elif code == 0:
            self._finish("succeeded", 0, None)
        else:
            self._finish("failed", code, f"exited with status {code}")

    def _cancel_requested(self) -> bool:
        with db.reading(_app.config["DATABASE"]) as conn:
            row = conn.execute(
                "SELECT cancel_requested FROM tasks WHERE id = ?", (self.task_id,)
            ).fetchone()
        return bool(row and row["cancel_requested"])

    def _feed_stdin(self, data: bytes) -> None:
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass  # the program does not read its stdin; that is its business

    def _read(self, stream, name: str) -> None:
        cfg = _app.config
        guard = self.guard
        assert guard is not None
        max_line = cfg["MAX_LOG_LINE_BYTES"]
        max_total = cfg["MAX_LOG_BYTES"]
        turn = time.monotonic()
        while True:
            # A child that keeps its pipe full never makes readline wait, so this
            # loop would never yield: rest every few ms (the pipe then holds the child).
            if time.monotonic() - turn > READ_TURN_S:
                gevent.sleep(READ_REST_S)
                turn = time.monotonic()
            raw = stream.readline(max_line + 1)
            if not raw:
                return
            guard.count_output(len(raw))
            if guard.over:
                continue  # being stopped: drain the pipe, parse nothing
            cut = not raw.endswith(b"\n") and len(raw) > max_line
            whole = raw
            # Read the rest of an over-long line: stored cut, but the usage parser
            # needs it whole (a CLI's final result line repeats the whole answer).
            while cut and raw and not raw.endswith(b"\n"):
                raw = stream.readline(max_line + 1)
                guard.count_output(len(raw))
                if len(whole) < USAGE_LINE_MAX:
                    whole += raw
            if name == "stdout":
                self.usage.feed(whole)
            line = whole[:max_line].decode("utf-8", errors="replace")
            hit = commands.rate_limit(line)
            if hit[0] and self.limit_kind in (None, "rate limit"):
                self.limit_kind = commands.limit_kind(line)
            self.rate_limited = commands.later_limit(self.rate_limited, hit)
            if self.resume and commands.session_missing(self.backend, line):
                self.session_missing = True
            # Reading goes on past the cap so a chatty child never blocks on a full pipe.
            if self.truncated:
                continue
            text = line.rstrip("\r\n")
            if cut:
                text += " [… line cut]"
            stored_as = name
            self.log.bytes += len(text)
            if self.log.bytes > max_total:
                self.truncated = True
                text = f"[… log truncated at {max_total} bytes; output after this is dropped]"
                stored_as = "system"
            self.log.line(stored_as, self._redacted(text))

    def _redacted(self, text: str) -> str:
        for secret in self.redact:
            text = text.replace(secret, "[redacted]")
        return text

    def _stop_process(self, grace: float) -> None:
        self._signal_run(signal.SIGTERM)
        if grace > 0:
            try:
                self.proc.wait(timeout=grace)
            except gevent.subprocess.TimeoutExpired:
                pass
        self._kill_group(signal.SIGKILL)
        try:
            self.proc.wait(timeout=5)
        except gevent.subprocess.TimeoutExpired:
            log.error("process did not die after SIGKILL", extra={"task_id": self.task_id})

    def _signal_run(self, sig: int) -> None:
        """Ask the run to stop. Under bubblewrap, signal what runs inside: bwrap passes
        nothing on, and bwrap's own death would SIGKILL them at once."""
        if not self.sandboxed:
            return self._kill_group(sig)
        for pid in sandbox.descendants(self.proc.pid):
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        return None

    def _kill_group(self, sig: int) -> None:
        # Killing bwrap (the group leader) ends its PID namespace: everything inside dies.
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _finish(
        self,
        outcome: str,
        code: int | None,
        error: str | None,
        retryable: bool = True,
        limit: tuple[float | None, str] | None = None,
    ) -> None:
        """Record the attempt and move the task on, in one transaction.

        `limit` (reset time, kind) is a usage limit the CLI reported: the account
        pauses, and the task waits for the reset without using up an attempt.
        """
        cfg = _app.config
        record = self.usage.record() if hasattr(self, "usage") else {}
        # The answer goes on to GitHub comments: never with a credential in it.
        if isinstance(record.get("result_text"), str):
            record["result_text"] = self._redacted(record["result_text"])
        if record.get("errors"):
            record["errors"] = [self._redacted(e) for e in record["errors"]]
        usage = json.dumps(record)

        def finish(conn):
            task = conn.execute(
                "SELECT * FROM tasks WHERE id = ? AND attempts = ?", (self.task_id, self.attempt)
            ).fetchone()
            if task is None or task["state"] not in ACTIVE:
                return []  # a newer attempt or a finished task: this run's result is stale
            t = time.time()
            evs, reason, until = [], error, None
            limited_before = conn.execute(
                "SELECT count(*) FROM attempts WHERE task_id = ? AND number < ?"
                " AND rate_limited_until IS NOT NULL",
                (self.task_id, self.attempt),
            ).fetchone()[0]
            # A run that always ends at "a limit" (an api_retry before some other
            # failure) must not retry for ever: past MAX_LIMITED, limits count too.
            if limit is not None and self.account is not None and limited_before < MAX_LIMITED:
                what = f"{self.backend} {limit[1]}"
                until, paused = accounts.pause(conn, self.account, limit[0], what, self.task_id, t)
                evs.append(paused)
                shown = accounts.clock(until, t)
                reason = f"{what}: account {self.account} paused until {shown}; resumes then"
            elif self.account is not None and limit is None and outcome in ("succeeded", "failed"):
                evs += accounts.settle(conn, self.account, self.started_at)
            conn.execute(
                "UPDATE attempts SET state = ?, exit_code = ?, error = ?, retryable = ?,"
                " rate_limited_until = ?, usage = ?, finished_at = ?"
                " WHERE task_id = ? AND number = ?",
                (outcome, code, reason, int(retryable), until, usage, t,
                 self.task_id, self.attempt),
            )  # fmt: skip
            evs.append(transition(conn, self.task_id, outcome, attempt=self.attempt,
                                  exit_code=code))  # fmt: skip
            spent = 0 if until is not None else 1  # a limit is not the task's failure
            if outcome in ("succeeded", "cancelled"):
                state, next_at = outcome, None
            elif until is not None:
                state, next_at = "queued", until
                evs.append(transition(conn, self.task_id, "queued", next_attempt_at=until,
                                      reason=reason))  # fmt: skip
            elif retryable and task["attempts"] < task["max_attempts"]:
                state = "queued"
                # A limit that paused no account (a shell command's) still says when.
                next_at = max((limit or (None,))[0] or 0, t + backoff(task["attempts"], cfg))
                evs.append(transition(conn, self.task_id, "queued", next_attempt_at=next_at))
            else:
                state, next_at = "dead", None
                evs.append(transition(conn, self.task_id, "dead", reason=reason))
            conn.execute(
                "UPDATE tasks SET state = ?, exit_code = ?, last_error = ?, updated_at = ?,"
                " next_attempt_at = coalesce(?, next_attempt_at), cancel_requested = 0,"
                " max_attempts = max_attempts + ?,"
                " finished_at = CASE WHEN ? IN ('succeeded', 'cancelled', 'dead') THEN ?"
                " ELSE NULL END WHERE id = ?",
                (state, code, reason, t, next_at, 1 - spent, state, t, self.task_id),
            )
            return evs

        # With the lines still pending: one transaction instead of a flush and then this.
        try:
            evs = self.log.flush(finish)
        except Exception:
            # The outcome matters more than the last lines: store it on its own.
            log.exception("storing the last log lines failed", extra={"task_id": self.task_id})
            self.log.drop_pending()
            evs = db.write(finish, _app.config["DATABASE"])
        events.publish_all(evs)
        log.info(
            "attempt finished",
            extra={"task_id": self.task_id, "attempt": self.attempt, "outcome": outcome},
        )


def cancel(task_id: int) -> bool:
    """Cancel a task; return False when it has already finished."""

    def mark(conn):
        row = conn.execute("SELECT state FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None or row["state"] not in CANCELLABLE:
            return False, []
        if row["state"] == "queued":
            conn.execute(
                "UPDATE tasks SET state = 'cancelled', finished_at = ?, updated_at = ?"
                " WHERE id = ?",
                (time.time(), time.time(), task_id),
            )
            return True, [transition(conn, task_id, "cancelled")]
        conn.execute("UPDATE tasks SET cancel_requested = 1 WHERE id = ?", (task_id,))
        return True, []

    ok, evs = db.write(mark)
    events.publish_all(evs)
    run = RUNS.get(task_id)
    if run is not None:
        run.cancel.set()
    return ok


def retry(task_id: int) -> bool:
    """Queue a finished task again for one more attempt; False when it is not finished."""

    def requeue(conn):
        row = conn.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None or row["state"] not in RETRYABLE_STATES:
            return []
        conn.execute(
            "UPDATE tasks SET state = 'queued', next_attempt_at = ?, finished_at = NULL,"
            " max_attempts = max(max_attempts, attempts + 1), updated_at = ? WHERE id = ?",
            (time.time(), time.time(), task_id),
        )
        return [transition(conn, task_id, "queued", retry=True)]

    evs = db.write(requeue)
    events.publish_all(evs)
    wake()
    return bool(evs)


def _ours(pid: int, marker: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"AGENTED_ATTEMPT={marker}".encode() in f.read().split(b"\0")
    except OSError:
        return False


def recover() -> None:
    """Treat attempts no instance runs any more as crashed (at start-up).

    On SQLite this process is the only one, so every attempt left running is a
    previous process's. On PostgreSQL only those whose lease ran out are, and
    those of an instance on this machine whose process is gone (a restart need
    not wait for the lease): the others belong to live instances.
    """
    cfg = _app.config
    with db.reading(cfg["DATABASE"]) as conn:
        gone = instances.gone_here(conn)
        stale = conn.execute(
            "SELECT a.task_id, a.number, a.pgid FROM attempts a JOIN tasks t ON t.id = a.task_id"
            " WHERE a.state IN ('starting', 'running') AND t.attempts = a.number"
            " AND (? = 1 OR a.lease_until IS NULL OR a.lease_until < ?"
            "      OR a.instance IN (SELECT value FROM json_each(?)))",
            (int(not db.is_postgres(cfg["DATABASE"])), time.time(), json.dumps(gone)),
        ).fetchall()
    recover_attempts(stale)
    log.info("recovery done", extra={"crashed_attempts": len(stale)})


def recover_attempts(stale: list) -> None:
    """Finish attempts as crashed (the retry policy applies); kill their orphans here."""
    if not stale:
        return
    cfg = _app.config
    # Lines a crashed run published live may never have been stored: the next
    # attempt numbers its lines past any of them (see runlog.PUBLISH_AHEAD).
    ids = [row["task_id"] for row in stale]
    db.write(lambda conn: runlog.skip_ahead(conn, ids), cfg["DATABASE"])
    for row in stale:
        if row["pgid"] and _ours(row["pgid"], f"{row['task_id']}:{row['number']}"):
            try:
                os.killpg(row["pgid"], signal.SIGKILL)
            except OSError:
                pass
        run = Run({"task_id": row["task_id"], "attempt": row["number"], "agent": ""})
        run._finish("crashed", None, "the instance running this attempt stopped")


def stop_lost(still_mine: set[int], since: float) -> None:
    """Stop local runs whose attempt is no longer this instance's (another recovered
    it while this one could not renew); runs claimed after `since` are not counted yet."""
    for task_id, run in list(RUNS.items()):
        if task_id not in still_mine and run.started_at < since:
            log.warning("attempt lost its lease: stopping it", extra={"task_id": task_id})
            run.cancel.set()


def begin_shutdown() -> None:
    """Stop claiming work and let streams close (SIGTERM received)."""
    global _stopping
    _stopping = True
    wake()


def shutdown() -> None:
    """Kill every running attempt's process group; recovery re-queues them at next start."""
    begin_shutdown()
    for run in list(RUNS.values()):
        run._kill_group(signal.SIGKILL)
