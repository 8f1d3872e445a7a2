"""The `agented` command line: `agented <noun> <verb>`, `--json` everywhere.

main.py holds the root group and the helpers every group shares; ops.py,
pipeline.py and messages.py hold the groups. This is the one place that puts
them on the root group, so none of them needs to import another.
"""

from __future__ import annotations

from app.cli import messages, ops, pipeline
from app.cli.main import main

for _command in (*pipeline.COMMANDS, *ops.COMMANDS, *messages.COMMANDS):
    main.add_command(_command)

__all__ = ["main"]
