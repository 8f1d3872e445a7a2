"""The `agented` command line: `agented <noun> <verb>`, `--json` everywhere.

main.py holds the root group and the helpers every group shares; pipeline.py
(task, delivery), triggers.py, agents.py, messages.py (msg, dlq) and ops.py
hold the groups. This is the one place that puts
them on the root group, so none of them needs to import another.
"""

from __future__ import annotations

from app.cli import agents, messages, ops, pipeline, triggers
from app.cli.main import main

for _command in (
    *pipeline.COMMANDS,
    *triggers.COMMANDS,
    *agents.COMMANDS,
    *messages.COMMANDS,
    *ops.COMMANDS,
):
    main.add_command(_command)

__all__ = ["main"]
