"""The huey reference for bench/dispatch.py: SqliteHuey, a task that runs `true`.

Imported by the benchmark (the producer: it enqueues and reads results) and run as
a script to be the consumer, in its own process, like `huey_consumer` would:

    BENCH_HUEY_DB=/tmp/x/huey.db python bench/_huey_tasks.py thread 20

`greenlet` instead of `thread` applies gevent's monkey patching first, as huey
asks for greenlet workers (huey_consumer itself does not patch).

Durability is matched to the hub's: the hub's SQLite runs WAL with
synchronous=NORMAL, so huey's connections get the same (SqliteHuey's default is
SQLite's FULL, which would fsync every commit and handicap huey).
"""

import sys

if __name__ == "__main__":
    if len(sys.argv) != 3:
        # `just bench` runs every bench/*.py; this one is started by bench/dispatch.py.
        print("the huey consumer of bench/dispatch.py; nothing to run on its own")
        sys.exit(0)
    if sys.argv[1] == "greenlet":
        from gevent import monkey

        monkey.patch_all()
    import _huey_tasks  # the tasks must be registered under the module's own name

    _huey_tasks.consume(sys.argv[1], int(sys.argv[2]))
    sys.exit(0)

import os  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

from huey import SqliteHuey  # noqa: E402
from huey.storage import SqliteStorage  # noqa: E402


class NormalSyncStorage(SqliteStorage):
    def _create_connection(self):
        conn = super()._create_connection()
        conn.execute("pragma synchronous=NORMAL")
        return conn


class BenchHuey(SqliteHuey):
    storage_class = NormalSyncStorage


huey = BenchHuey("bench", filename=os.environ.get("BENCH_HUEY_DB", "huey-bench.db"))


@huey.task()
def run_true() -> float:
    """Run the same trivial child the hub runs; return when it finished (epoch seconds)."""
    subprocess.run(["true"], check=True)
    return time.time()


def consume(worker_type: str, workers: int) -> None:
    # Polling: start at 10 ms (huey's default is 100 ms) so idle pick-up delay is small;
    # a busy worker takes the next task at once either way.
    consumer = huey.create_consumer(
        workers=workers,
        worker_type=worker_type,
        initial_delay=0.01,
        backoff=1.15,
        max_delay=1.0,
        periodic=False,
        check_worker_health=False,
    )
    consumer.run()
