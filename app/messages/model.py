"""The FIPA-ACL message model: performatives, ids, the request bodies, Draft and Problem.

The leaf of the messaging package: the send path (drafts.py, send.py), delegation and
Contract Net all build on these, and this module imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, RootModel, TypeAdapter

from app.agents import NAME
from app.api import Body

PERFORMATIVES = (
    "request", "inform", "query-if", "query-ref", "cfp", "propose", "accept-proposal",
    "reject-proposal", "agree", "refuse", "failure", "cancel", "not-understood",
)  # fmt: skip
Performative = Literal[
    "request", "inform", "query-if", "query-ref", "cfp", "propose", "accept-proposal",
    "reject-proposal", "agree", "refuse", "failure", "cancel", "not-understood",
]  # fmt: skip
ID = r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$"


class CapabilityReceiver(Body):
    capability: list[str] = Field(min_length=1, max_length=20)


class MessageIn(Body):
    performative: Performative
    sender: str | None = Field(default=None, pattern=NAME)
    receiver: str | list[str] | CapabilityReceiver = Field(
        description="an agent name, a list of names, or {'capability': [tags]} (broadcast)"
    )
    conversation_id: str | None = Field(default=None, pattern=ID)
    reply_with: str | None = Field(default=None, max_length=128)
    in_reply_to: str | None = Field(default=None, max_length=128)
    protocol: str | None = Field(default=None, max_length=100)
    content: Any = None
    ttl: float | None = Field(default=None, gt=0, description="seconds")
    message_id: str | None = Field(default=None, pattern=ID)


class BatchIn(Body):
    messages: list[MessageIn] = Field(min_length=1)


class SendIn(RootModel[MessageIn | BatchIn]):
    """One message, or {"messages": [...]} stored in one transaction."""


# A whole batch in one call: half the cost of one model_validate per message.
# When it fails, each message is validated alone to say which ones are bad and why.
MESSAGES = TypeAdapter(list[MessageIn])


class Problem(Exception):
    """One message of a send cannot be accepted; `reply` says whether to send not-understood."""

    def __init__(self, code: str, message: str, details: Any = None, reply: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        self.reply = reply


@dataclass(slots=True)
class Draft:
    """A validated message with its receivers resolved, ready to insert."""

    msg: MessageIn
    sender: str
    receivers: list[str]
    content: str
    digest: str
    ttl: float
    draining: list[str] = field(default_factory=list)
    task_plan: dict | None = None
