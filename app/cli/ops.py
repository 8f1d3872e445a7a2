"""Operations commands for `agented`: backup, restore, audit, alerts, retention, compact,
diagnose, completion. Registered on the root group in app/cli/__init__.py.
"""

from __future__ import annotations

import getpass
import sys
import time

import click
from click.shell_completion import get_completion_class

from app import config, db
from app.cli.main import emit, main, open_db, settings
from app.ops import alerts, audit, backup, diagnose, restore, retention

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


# --- backup and restore ---------------------------------------------------------------


passphrase_option = click.option(
    "--passphrase-file",
    type=click.File("r"),
    help="Read the passphrase that seals the secret key from this file ('-' for stdin); "
    "default AGENTED_BACKUP_PASSPHRASE.",
)


def read_passphrase(cfg: dict, file) -> str:
    """The passphrase from --passphrase-file (its first line), else from the settings."""
    if file is None:
        return cfg["BACKUP_PASSPHRASE"]
    value = file.readline().rstrip("\r\n")
    if len(value) < config.MIN_PASSPHRASE:
        raise click.BadParameter(
            f"the passphrase must be at least {config.MIN_PASSPHRASE} characters",
            param_hint="--passphrase-file",
        )
    return value


def sqlite_only(cfg: dict, command: str) -> None:
    """Refuse a command about the SQLite file on a PostgreSQL hub, saying what to use."""
    if db.is_postgres(cfg["DATABASE"]):
        raise click.ClickException(
            f"agented {command} works on the SQLite file; this hub uses PostgreSQL: use"
            " pg_dump / pg_restore and PostgreSQL's own VACUUM (docs/scale-out.md)"
        )


@click.group("backup", invoke_without_command=True)
@passphrase_option
@json_option
@click.pass_context
def backup_group(ctx: click.Context, passphrase_file, as_json: bool) -> None:
    """Back up the database now (online; checked with integrity_check; keeps the last N).

    With a passphrase the backup carries the secret key sealed with it, so it
    can be restored on another machine; without one it needs the secret_key file.
    """
    if ctx.invoked_subcommand is not None:
        return
    cfg = settings()
    sqlite_only(cfg, "backup")
    try:
        result = backup.create_backup(cfg, read_passphrase(cfg, passphrase_file))
    except (backup.BackupError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    sealed = "secret key sealed" if result["sealed_key"] else "secret key NOT included"
    text = f"{result['file']} ({result['size']} bytes, {result['duration_s']} s, integrity ok)"
    emit(as_json, result, f"{text}\n{sealed}")
    if result.get("warning") and not as_json:  # with --json it is the "warning" field
        click.echo(f"warning: {result['warning']}", err=True)


@backup_group.command("list")
@json_option
def backup_list(as_json: bool) -> None:
    """List backups, newest first."""
    found = backup.list_backups(settings())
    lines = [f"{b['file']}  {b['size']:>12} bytes" for b in found]
    emit(as_json, {"backups": found}, "\n".join(lines) or "no backups")


@click.command("restore")
@click.argument("file", type=click.Path(dir_okay=False))
@passphrase_option
@click.option("--without-secrets", is_flag=True,
              help="Restore even though the backup's secret key is not available "
              "(stored webhook and agent secrets will not decrypt).")  # fmt: skip
@json_option
def restore_cmd(file: str, passphrase_file, without_secrets: bool, as_json: bool) -> None:
    """Replace the database with a backup (refused while the service runs).

    A backup made with another secret key (from another machine) needs its
    passphrase: restore then writes the backup's key to DATA_DIR/secret_key.
    """
    cfg = settings(create=True)  # a new machine's data dir starts here
    sqlite_only(cfg, "restore")
    try:
        result = restore.restore(cfg, file, read_passphrase(cfg, passphrase_file), without_secrets)
    except (backup.BackupError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    kept = result["replaced"] or "nothing (there was no database)"
    text = f"restored {result['restored']}\nthe replaced database is in {kept}"
    emit(as_json, result, "\n".join([text, *result["notes"]]))


# --- audit ------------------------------------------------------------------------


@click.group("audit")
def audit_group() -> None:
    """The audit log, chained with a MAC keyed by SECRET_KEY."""


@audit_group.command("verify")
@json_option
def audit_verify(as_json: bool) -> None:
    """Check the chain; exit 1 and name the first bad row if any row was edited or deleted."""
    cfg = settings()
    conn = open_db(cfg)
    try:
        result = audit.verify(conn, cfg["SECRET_KEY"])  # the MAC key is not in the database
    finally:
        conn.close()
    if result["ok"]:
        emit(as_json, result, f"ok: {result['rows']} rows, chain intact")
        return
    emit(as_json, result, f"BROKEN at row {result['first_bad_id']}: {result['problem']}")
    sys.exit(1)


@audit_group.command("list")
@click.option("--limit", type=click.IntRange(1, 10000), default=50)
@click.option("--actor")
@click.option("--action")
@json_option
def audit_list(limit: int, actor: str | None, action: str | None, as_json: bool) -> None:
    """Show the newest audit entries."""
    where, params = [], []
    for name, value in (("actor", actor), ("action", action)):
        if value:
            where.append(f"{name} = ?")
            params.append(value)
    sql = "SELECT * FROM audit_log" + (" WHERE " + " AND ".join(where) if where else "")
    conn = open_db(settings())
    try:
        rows = [audit.entry_json(r) for r in conn.execute(sql + " ORDER BY id DESC LIMIT ?",
                                                           (*params, limit))]  # fmt: skip
    finally:
        conn.close()
    lines = [
        f"{r['id']:>6}  {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(r['ts']))}Z"
        f"  {r['actor']:<16} {r['target']}  -> {r['status']}"
        for r in rows
    ]
    emit(as_json, {"entries": rows}, "\n".join(lines) or "no entries")


# --- alerts -------------------------------------------------------------------------


@click.group("alerts")
def alerts_group() -> None:
    """Alerts and their rules."""


@alerts_group.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include resolved alerts.")
@json_option
def alerts_list(show_all: bool, as_json: bool) -> None:
    """List open alerts (or all with --all)."""
    conn = open_db(settings())
    try:
        sql = "SELECT * FROM alerts" + ("" if show_all else " WHERE state != 'resolved'")
        rows = [alerts.alert_json(r) for r in conn.execute(sql + " ORDER BY id DESC LIMIT 200")]
    finally:
        conn.close()
    lines = [f"{a['id']:>5}  {a['state']:<12} {a['severity']:<8} {a['message']}" for a in rows]
    emit(as_json, {"alerts": rows}, "\n".join(lines) or "no alerts")


@alerts_group.command("rules")
@json_option
def alerts_rules(as_json: bool) -> None:
    """Show every rule with its threshold, window and cooldown."""
    conn = open_db(settings())
    try:
        found = list(alerts.rules(conn).values())
    finally:
        conn.close()
    lines = [
        f"{r['name']:<15} {'on ' if r['enabled'] else 'off'} {r['direction']} "
        f"{r['threshold']:g}  cooldown {r['cooldown_s']} s  {r['measures']}"
        for r in found
    ]
    emit(as_json, {"rules": found}, "\n".join(lines))


def _close_alert(alert_id: int, action: str, as_json: bool) -> None:
    cfg = settings()
    open_db(cfg).close()
    column = "acknowledged" if action == "acknowledged" else "resolved"

    def change(conn):
        row = conn.execute("SELECT * FROM alerts WHERE id = ?", (alert_id,)).fetchone()
        if row is None or row["state"] == "resolved" or row["state"] == action:
            return None
        conn.execute(
            f"UPDATE alerts SET state = ?, {column}_at = ?, {column}_by = ? WHERE id = ?",
            (action, time.time(), f"cli:{getpass.getuser()}", alert_id),
        )
        return alerts.alert_json(
            conn.execute("SELECT * FROM alerts WHERE id = ?", (alert_id,)).fetchone()
        )

    alert = db.write(change, cfg["DATABASE"])
    if alert is None:
        raise click.ClickException(f"no open alert {alert_id} (or it is already {action})")
    alerts.notify(cfg, [(action, alert)])
    emit(as_json, alert, f"alert {alert_id} {action}")


@alerts_group.command("ack")
@click.argument("alert_id", type=int)
@json_option
def alerts_ack(alert_id: int, as_json: bool) -> None:
    """Acknowledge an alert: no more reminders until it resolves."""
    _close_alert(alert_id, "acknowledged", as_json)


@alerts_group.command("resolve")
@click.argument("alert_id", type=int)
@json_option
def alerts_resolve(alert_id: int, as_json: bool) -> None:
    """Resolve an alert by hand."""
    _close_alert(alert_id, "resolved", as_json)


@alerts_group.command("evaluate")
@json_option
def alerts_evaluate(as_json: bool) -> None:
    """Evaluate every rule once now and send what is owed."""
    cfg = settings()
    open_db(cfg).close()
    result = alerts.evaluate(cfg)
    lines = [f"{k:<15} {v}" for k, v in result["values"].items()]
    lines += [f"notified: {n['event']} {n['alert']['message']}" for n in result["notified"]]
    emit(as_json, result, "\n".join(lines))


# --- upkeep ---------------------------------------------------------------------------


@click.group("retention")
def retention_group() -> None:
    """Deleting rows past their retention period."""


@retention_group.command("run")
@json_option
def retention_run(as_json: bool) -> None:
    """Delete what is past retention now, in small batches."""
    cfg = settings()
    open_db(cfg).close()
    done = retention.run(cfg)
    emit(as_json, {"deleted": done}, "\n".join(f"{k:<12} {v}" for k, v in done.items()))


@click.command("compact")
@click.option("--full", is_flag=True, help="VACUUM the whole file (service must be stopped).")
@json_option
def compact_cmd(full: bool, as_json: bool) -> None:
    """Checkpoint the WAL and give free pages back (with --full: rebuild the file)."""
    cfg = settings()
    sqlite_only(cfg, "compact")
    open_db(cfg).close()
    if full:
        lock = backup.try_lock(cfg)
        if lock is None:
            raise click.ClickException("the service is running; stop it before compact --full")
        try:
            result = retention.full_vacuum(str(cfg["DATABASE"]))
        finally:
            lock.close()
        emit(as_json, result, f"{result['before_bytes']} -> {result['after_bytes']} bytes")
        return
    result = retention.compact(cfg)
    before, after = result["before"], result["after"]
    emit(as_json, result, f"db {before['db_bytes']} -> {after['db_bytes']} bytes, "
                          f"wal {before['wal_bytes']} -> {after['wal_bytes']} bytes")  # fmt: skip


@click.command("diagnose")
@json_option
def diagnose_cmd(as_json: bool) -> None:
    """Check configuration, database, migrations, disk, agent CLIs, port and systemd."""
    try:
        settings(create=True)  # loads .env the way the service does; says what is missing
    except click.ClickException:
        pass  # diagnose reports the configuration error itself
    found = diagnose.run()
    failed = any(c["level"] == "fail" for c in found)
    lines = []
    for c in found:
        lines.append(f"{c['level'].upper():<5} {c['name']:<14} {c['detail']}")
        if c["fix"] and c["level"] != "ok":
            lines.append(f"{'':<20}fix: {c['fix']}")
    emit(as_json, {"ok": not failed, "checks": found}, "\n".join(lines))
    if failed:
        sys.exit(1)


@click.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
@json_option
def completion_cmd(shell: str, as_json: bool) -> None:
    """Print the shell completion script: eval "$(agented completion bash)"."""
    cls = get_completion_class(shell)
    assert cls is not None  # every listed choice has a class in click
    script = cls(main, {}, "agented", "_AGENTED_COMPLETE").source()
    emit(as_json, {"shell": shell, "script": script}, script)


COMMANDS = (
    backup_group,
    restore_cmd,
    audit_group,
    alerts_group,
    retention_group,
    compact_cmd,
    diagnose_cmd,
    completion_cmd,
)
