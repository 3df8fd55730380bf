"""The health score formula, per-signal states and recommendation texts."""

from __future__ import annotations

import pytest

from monitoring.governor import GovernorMemo, signal_states
from monitoring.health import calculate_health_score, recommendations, snapshot_score
from monitoring.hysteresis import AlertState, Phase
from tests.monitoring.helpers import snap


@pytest.mark.parametrize(
    ("memory", "cpu", "load", "score"),
    [
        (0, 0, 0, 100.0),
        (20, 50, 0.5, 0.4 * 70 + 0.3 * 40 + 0.3 * 50),
        (80, 90, 1.5, 0.0),  # every part clamps at zero
        (69, 25.5, 0.12, 0.4 * 0 + 0.3 * 69.4 + 0.3 * 88),  # 1.5 x 69 % > 100: memory part 0
    ],
)
def test_the_health_score_is_the_weighted_sum(
    memory: float, cpu: float, load: float, score: float
) -> None:
    assert calculate_health_score(memory, cpu, load) == pytest.approx(score)


def test_snapshot_score_uses_the_budget_and_max_sessions() -> None:
    s = snap(0.0, 512.0, cpu_percent=10.0, active_sessions=25)
    # memory 25 % of 2048 MB, CPU 10 %, load 0.25
    expected = 0.4 * (100 - 37.5) + 0.3 * (100 - 12) + 0.3 * 75
    assert snapshot_score(s, budget_mb=2048, max_sessions=100) == round(expected, 1)


def test_signal_states_and_recommendations() -> None:
    memo = GovernorMemo(
        alerts={
            "memory_cleanup": AlertState(Phase.FIRING),
            "cpu_high": AlertState(Phase.PENDING),
            "disk": AlertState(Phase.FIRING),
        }
    )
    states = signal_states(memo)
    assert states["memory"] == "warning"  # medium severity
    assert states["cpu"] == "pending"
    assert states["disk"] == "critical"  # high severity
    assert states["sessions"] == "ok"
    advice = recommendations(states, score=80, throttled=False, restart_pending=True)
    assert advice[0].startswith("A restart was requested")
    assert any("Memory is high" in a for a in advice)
    assert any("disk" in a for a in advice)
    calm = {key: "ok" for key in states}
    assert recommendations(calm, score=95, throttled=False, restart_pending=False) == [
        "System performing well"
    ]
