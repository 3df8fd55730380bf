"""The pure restart policy: backoff, flap limit, planned restarts; the children list."""

from __future__ import annotations

from collections import deque

import pytest

from core.config import Settings
from monitoring.supervisor import Policy, RestartDecision, supervised_children


def test_backoff_doubles_up_to_the_maximum() -> None:
    policy = Policy(backoff_initial_s=1.0, backoff_max_s=60.0)
    assert [policy.backoff(n) for n in range(0, 9)] == [0, 1, 2, 4, 8, 16, 32, 60, 60]


def test_flap_limit_counts_only_restarts_inside_the_window() -> None:
    policy = Policy(flap_max=3, flap_window_s=300.0)
    restarts: deque[float] = deque([0.0, 100.0, 200.0])
    assert policy.is_flapping(restarts, now=250.0) is True
    assert policy.is_flapping(restarts, now=301.0) is False  # the first one aged out
    assert list(restarts) == [100.0, 200.0]


def test_policy_comes_from_settings(tmp_path: object) -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        supervisor_backoff_initial_s=0.5,
        supervisor_flap_max=7,
        restart_grace_s=12,
    )
    policy = Policy.from_settings(settings)
    assert (policy.backoff_initial_s, policy.flap_max, policy.grace_s) == (0.5, 7, 12)


def test_supervised_children_server_first_then_worker_and_extras() -> None:
    children = supervised_children(
        "py", "main.py", "http://x/health/live", worker=True, extra=["tick=sleep 1"]
    )
    assert [c.name for c in children] == ["server", "worker", "tick"]
    assert children[0].live_url == "http://x/health/live" and children[0].records_own_exits
    assert children[1].start_after == "server" and children[1].argv == ["py", "main.py", "worker"]
    assert children[2].argv == ["sleep", "1"]
    with pytest.raises(ValueError, match="NAME=COMMAND"):
        supervised_children("py", "main.py", "u", worker=False, extra=["nocommand"])
    with pytest.raises(ValueError, match="already exists"):
        supervised_children("py", "main.py", "u", worker=False, extra=["server=true"])


class Child:
    """The supervisor's per-child restart bookkeeping, driven through the pure policy."""

    def __init__(self, policy: Policy, uptime_s: float = 70.0) -> None:
        self.policy, self.uptime_s, self.attempt = policy, uptime_s, 0
        self.restarts: deque[float] = deque()
        self.planned: deque[float] = deque()

    def exits(self, now: float, *, planned: bool) -> RestartDecision:
        decision = self.policy.decide_restart(
            planned=planned,
            attempt=self.attempt,
            uptime_s=self.uptime_s,
            restarts=self.restarts,
            planned_restarts=self.planned,
            now=now,
        )
        self.attempt = decision.attempt
        return decision


def test_only_the_first_planned_restart_in_the_window_is_free() -> None:
    child = Child(Policy(backoff_initial_s=1.0, flap_max=5, flap_window_s=300.0))
    delays = [child.exits(t, planned=True).delay_s for t in (0.0, 80.0, 160.0)]
    assert delays == [0.0, 1.0, 2.0]


def test_a_planned_restart_after_the_window_is_free_again() -> None:
    child = Child(Policy(flap_window_s=300.0))
    assert child.exits(0.0, planned=True).delay_s == 0.0
    assert child.exits(301.0, planned=True).delay_s == 0.0


def test_a_planned_restart_loop_ends_in_failed() -> None:
    """A child asking for a restart soon after every start reaches the flap limit."""
    child = Child(Policy(backoff_initial_s=1.0, flap_max=5, flap_window_s=300.0), uptime_s=40.0)
    now, actions = 0.0, []
    for _ in range(10):
        decision = child.exits(now, planned=True)
        actions.append(decision.action)
        if decision.action == "fail":
            break
        now += decision.delay_s + child.uptime_s
    assert actions == ["restart"] * 5 + ["fail"]


def test_planned_and_crash_restarts_share_the_flap_limit() -> None:
    child = Child(Policy(flap_max=3, flap_window_s=300.0))
    assert child.exits(0.0, planned=True).action == "restart"
    assert child.exits(10.0, planned=False).action == "restart"
    assert child.exits(20.0, planned=True).action == "restart"
    assert child.exits(30.0, planned=False).action == "fail"


def test_a_long_healthy_run_resets_the_backoff() -> None:
    child = Child(Policy(backoff_initial_s=1.0, backoff_reset_s=600.0), uptime_s=10.0)
    child.exits(0.0, planned=False)
    assert child.exits(20.0, planned=False).delay_s == 2.0
    child.uptime_s = 700.0
    assert child.exits(800.0, planned=False).delay_s == 1.0
