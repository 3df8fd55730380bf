"""The supervisor: keeps the chat server and the Huey worker running.

- ``policy``: the pure restart policy (backoff, flap limit, exit meanings);
- ``children``: what is supervised and what is known about each child;
- ``runner``: the loop that carries the policy out (spawn, reap, watchdog);
- ``process``, ``state_file``, ``webhook``: the plumbing it uses.
"""

from __future__ import annotations

from monitoring.supervisor.children import ChildSpec, ChildState, supervised_children
from monitoring.supervisor.policy import Policy, RestartDecision
from monitoring.supervisor.runner import Supervisor
from monitoring.supervisor.webhook import webhook_alerter

__all__ = [
    "ChildSpec",
    "ChildState",
    "Policy",
    "RestartDecision",
    "Supervisor",
    "supervised_children",
    "webhook_alerter",
]
