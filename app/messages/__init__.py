"""Messaging between agents: FIPA-ACL messages, mailboxes, conversations, Contract Net.

model (the message and its parts, the leaf), store (mailbox rows and hub
replies), drafts (a raw message checked and resolved into a Draft; the
not-understood replies), send (the send route and its write), mailboxes
(lease, ack, the sweep), conversations, contract_net, delegation (requests
that become tasks), dead_letters, and settings (what derives from the
messaging settings). Each blueprint module is registered by name in
app/__init__.py's FEATURES.
"""
