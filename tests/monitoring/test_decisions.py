"""Pure governor decisions on synthetic series with a fake clock (no sleeping)."""

from __future__ import annotations

from monitoring.governor import (
    Cleanup,
    GovernorMemo,
    RaiseAlert,
    RequestRestart,
    ResolveAlert,
    SetEmergency,
    Throttle,
    Unthrottle,
    decide,
)
from tests.monitoring.helpers import run, series, snap, thresholds


def raised(actions, alert_type: str) -> list[float]:
    return [t for t, a in actions if isinstance(a, RaiseAlert) and a.alert.alert_type == alert_type]


def resolved(actions, key: str) -> list[float]:
    return [t for t, a in actions if isinstance(a, ResolveAlert) and a.key == key]


def of_type(actions, kind) -> list:
    return [(t, a) for t, a in actions if isinstance(a, kind)]


def test_a_step_up_fires_exactly_at_the_sustain_time() -> None:
    th = thresholds()  # sustain 60 s, samples every 5 s, cleanup at 600 MB
    _, actions = run(series(lambda t: 700 if t >= 100 else 100, end=400), th)
    assert raised(actions, "memory_warning") == [160.0]


def test_a_fast_square_wave_straddling_the_threshold_never_transitions() -> None:
    th = thresholds()
    wave = series(lambda t: 610 if (t // 10) % 2 else 590, end=1800)
    _, actions = run(wave, th)
    transitions = raised(actions, "memory_warning") + resolved(actions, "memory_cleanup")
    assert len(transitions) <= 1
    assert transitions == []


def test_a_slow_square_wave_inside_the_band_gives_one_transition() -> None:
    th = thresholds()  # clear level is 540 MB (10 % margin)
    wave = series(lambda t: 610 if (t // 80) % 2 == 0 else 580, end=3600)
    _, actions = run(wave, th)
    transitions = raised(actions, "memory_warning") + resolved(actions, "memory_cleanup")
    assert len(transitions) == 1


def test_an_alternating_series_is_reported_as_flapping_once() -> None:
    th = thresholds()
    _, actions = run(series(lambda t: 700 if (t // 5) % 2 else 400, end=3600), th)
    flapping = [
        a.alert
        for _, a in actions
        if isinstance(a, RaiseAlert) and a.alert.key == "memory_cleanup:flapping"
    ]
    assert len(flapping) == 1
    assert flapping[0].alert_type == "alert_flapping"
    assert raised(actions, "memory_warning") == []


def test_a_dip_shorter_than_the_hold_does_not_resolve() -> None:
    th = thresholds()  # hold 120 s
    shape = {(0, 300): 700, (300, 360): 400, (360, 600): 700, (600, 1200): 400}

    def memory(t: float) -> float:
        return next(v for (a, b), v in shape.items() if a <= t < b)

    _, actions = run(series(memory, end=1195), th)
    assert raised(actions, "memory_warning") == [60.0]
    # the 60 s dip at 300 s changes nothing; the long one resolves after the hold
    assert resolved(actions, "memory_cleanup") == [720.0]


def test_cleanup_that_frees_nothing_escalates_instead_of_looping() -> None:
    th = thresholds()
    _, actions = run(series(lambda t: 700, end=3600), th)
    cleanups = of_type(actions, Cleanup)
    restarts = of_type(actions, RequestRestart)
    assert [t for t, _ in cleanups] == [60.0]
    assert len(restarts) == 1
    when, request = restarts[0]
    assert request.reason == "governor_memory" and not request.immediate
    assert when == 60.0 + th.settle_s
    assert "freed 0 MB" in request.detail


def test_memory_that_grew_during_the_cleanup_freed_zero_not_minus_zero() -> None:
    th = thresholds()
    _, actions = run(series(lambda t: 700 if t <= 60 else 700.3, end=3600), th)
    (_, request), *_ = of_type(actions, RequestRestart)
    assert "freed 0 MB" in request.detail and "-0" not in request.detail


def test_cleanup_that_helps_is_not_escalated() -> None:
    th = thresholds()
    # memory falls below the clear level once the cleanup (at 60 s) has run
    _, actions = run(series(lambda t: 700 if t <= 60 else 500, end=1200), th)
    assert len(of_type(actions, Cleanup)) == 1
    assert of_type(actions, RequestRestart) == []
    assert resolved(actions, "memory_cleanup") == [65.0 + 120.0]


def test_cleanups_respect_the_cooldown_and_stop_after_three_above() -> None:
    th = thresholds(governor_cleanup_cooldown_s=120.0)

    # every cleanup frees 50 MB but memory creeps back: each "helped", all above
    def memory(t: float) -> float:
        return 650.0 if t > 60 and 0 < (t - 60) % 120 <= th.settle_s + 5 else 700.0

    _, actions = run(series(memory, end=3600), th)
    times = [t for t, _ in of_type(actions, Cleanup)]
    assert times == [60.0, 180.0, 300.0]
    assert len(of_type(actions, RequestRestart)) == 1


def test_throttle_engages_and_disengages_with_hysteresis() -> None:
    th = thresholds()  # throttle at 85 % CPU, clear below 75 %

    def cpu(t: float) -> float:
        if t < 100:
            return 20.0
        if t < 400:
            return 95.0
        if t < 1000:
            return 80.0  # inside the band: stays throttled
        return 50.0

    snaps = [snap(t, cpu_percent=cpu(t)) for t in range(0, 1600, 5)]
    memo, actions = run(snaps, th)
    assert [t for t, _ in of_type(actions, Throttle)] == [160.0]
    assert [t for t, _ in of_type(actions, Unthrottle)] == [1120.0]
    assert not memo.throttled


def test_host_cpu_pressure_alone_does_not_throttle_but_our_cgroups_does() -> None:
    th = thresholds()
    host = [snap(t, cpu_pressure=90.0, pressure_scope="host") for t in range(0, 600, 5)]
    _, actions = run(host, th)
    assert of_type(actions, Throttle) == []
    assert raised(actions, "cpu_pressure") == [60.0]
    own = [snap(t, cpu_pressure=90.0, pressure_scope="cgroup") for t in range(0, 600, 5)]
    _, actions = run(own, th)
    assert [t for t, _ in of_type(actions, Throttle)] == [60.0]


def test_loop_lag_throttles() -> None:
    th = thresholds()
    _, actions = run([snap(t, loop_lag_ms=900.0) for t in range(0, 300, 5)], th)
    assert [t for t, _ in of_type(actions, Throttle)] == [60.0]
    assert raised(actions, "loop_lag") == [60.0]


def test_the_first_sample_never_drives_a_decision() -> None:
    th = thresholds(governor_sustain_s=0.0)
    first = snap(0.0, 5000.0, cpu_percent=100.0, primed=False)
    memo, actions = decide([first], GovernorMemo(), th=th, now=0.0)
    assert actions == [] and memo == GovernorMemo()
    second = snap(5.0, 5000.0, cpu_percent=100.0)
    _, actions = decide([first, second], memo, th=th, now=5.0)
    assert any(isinstance(a, RaiseAlert) for a in actions)


def test_the_hard_limit_requests_an_immediate_restart_quickly() -> None:
    th = thresholds()
    _, actions = run(series(lambda t: 1200 if t >= 100 else 100, end=400), th)
    hard = [a for _, a in of_type(actions, RequestRestart) if a.immediate]
    assert len(hard) == 1 and hard[0].reason == "governor_memory"
    assert raised(actions, "memory_hard_limit") == [110.0]  # two samples, not the sustain
    assert [a.on for _, a in of_type(actions, SetEmergency)] == [True]


def test_sustained_throttling_escalates_to_a_cpu_restart() -> None:
    th = thresholds()
    _, actions = run([snap(t, cpu_percent=99.0) for t in range(0, 1500, 5)], th)
    cpu = [a for _, a in of_type(actions, RequestRestart) if a.reason == "governor_cpu"]
    assert len(cpu) == 1
    assert raised(actions, "cpu_critical") == [600.0]


def test_steady_memory_growth_raises_a_leak_alert_and_flat_memory_does_not() -> None:
    th = thresholds()  # leak at >= 90 MB/h over the last 30 min
    _, actions = run(series(lambda t: 100 + t * 150 / 3600, end=3600), th)
    leak = raised(actions, "memory_leak")
    assert len(leak) == 1 and 900 <= leak[0] <= 1000
    message = next(a.alert.message for _, a in actions if isinstance(a, RaiseAlert))
    assert "grows 150 MB/h" in message and "in about 5.1 h" in message
    _, actions = run(series(lambda t: 100 + (t % 60) / 10, end=3600), th)
    assert raised(actions, "memory_leak") == []


def test_a_small_budget_scales_the_memory_ladder() -> None:
    th = thresholds(budget_mb=512.0)
    assert th.scale < 1
    assert th.hard_restart_mb <= 512 * 0.95 + 1e-6
    assert th.cleanup_mb < th.high_mb < th.restart_mb < th.hard_restart_mb
    big = thresholds(budget_mb=8192.0)
    assert (big.cleanup_mb, big.hard_restart_mb) == (600.0, 1000.0)


def test_flapping_ends_when_the_signal_goes_unknown_for_a_window() -> None:
    from monitoring.hysteresis import FLAP_END, FLAPPING, AlertState, Level, Timing, step

    timing = Timing(sustain_s=60.0, hold_s=120.0, flap_window_s=300.0, flap_limit=4)
    state, events_seen = AlertState(), []
    for i in range(12):  # alternating every 5 s: flapping
        level = Level.RAISE if i % 2 else Level.CLEAR
        state, events = step(state, level, now=i * 5.0, timing=timing)
        events_seen += events
    assert events_seen.count(FLAPPING) == 1
    for t in range(60, 1000, 5):  # then no reading at all, for longer than the window
        state, events = step(state, Level.UNKNOWN, now=float(t), timing=timing)
        events_seen += events
    assert events_seen.count(FLAP_END) == 1 and state.flips == () and not state.flapping


def test_after_two_recent_governor_restarts_the_governor_alerts_instead_of_restarting() -> None:
    th = thresholds()  # cleanup at 600 MB, cooldown 120 s
    high = series(lambda t: 700, end=1800)
    _, actions = run(high, th, recent_restarts=1)  # one restart may still help
    assert len(of_type(actions, RequestRestart)) == 1

    memo, actions = run(high, th, recent_restarts=2)
    assert of_type(actions, RequestRestart) == []
    futile = [
        a.alert for _, a in of_type(actions, RaiseAlert) if a.alert.key == "restart_not_helping"
    ]
    assert len(futile) == 1  # once, not on every escalation
    assert futile[0].severity == "critical"
    assert futile[0].message.startswith(
        "restart does not help: memory stays above 600 MB after 2 restarts"
    )
    assert futile[0].recommended_action
    # cleanup goes on at the cooldown instead of stopping after the escalation
    assert len(of_type(actions, Cleanup)) >= 10
    assert memo.futile_raised

    # memory comes down: the alert resolves with the memory alerts
    later = series(lambda t: 100, start=1805, end=2400)
    memo, actions = run([*high, *later], th, recent_restarts=2)
    assert resolved(actions, "restart_not_helping") != []
    assert not memo.futile_raised


def test_the_hard_limit_does_not_restart_either_once_restarts_proved_futile() -> None:
    th = thresholds()
    _, actions = run(series(lambda t: 1200, end=400), th, recent_restarts=3)
    assert of_type(actions, RequestRestart) == []
    futile = [
        a.alert for _, a in of_type(actions, RaiseAlert) if a.alert.key == "restart_not_helping"
    ]
    assert len(futile) == 1 and "above 1000 MB after 3 restarts" in futile[0].message
    assert raised(actions, "memory_hard_limit") == [10.0]


def test_memory_levels_use_the_servers_own_memory_the_hard_limit_the_trees() -> None:
    th = thresholds()  # cleanup 600, high 800, restart 900, hard 1000 MB
    # the worker and the supervisor hold most of it: cleanup or restart cannot help
    tree_heavy = series(lambda t: 950, end=1200, server_memory_mb=200.0)
    _, actions = run(tree_heavy, th)
    assert of_type(actions, Cleanup) == [] and of_type(actions, RequestRestart) == []
    assert raised(actions, "memory_warning") == [] and raised(actions, "memory_critical") == []
    # the budget is the tree's: over the hard limit the restart comes all the same
    _, actions = run(series(lambda t: 1100, end=400, server_memory_mb=200.0), th)
    assert raised(actions, "memory_hard_limit") == [10.0]
    # the server itself is above the cleanup level: cleanup, measured on the server
    server_heavy = series(lambda t: 720, end=400, server_memory_mb=650.0)
    _, actions = run(server_heavy, th)
    assert [t for t, _ in of_type(actions, Cleanup)] == [60.0]
    message = next(a.alert.message for _, a in of_type(actions, RaiseAlert))
    assert "650 MB" in message and "whole tree 720 MB" in message


def test_a_low_throttle_limit_clears_at_a_relative_level() -> None:
    # A 10 % limit used to clear only below 0 % (limit - 10): throttled for ever.
    th = thresholds(governor_throttle_cpu_percent=10.0, governor_cpu_ceiling_percent=6.0)

    def cpu(t: float) -> float:
        if t < 100:
            return 2.0
        if t < 400:
            return 15.0
        if t < 1000:
            return 9.0  # inside the band (clear level 8 %): stays throttled
        return 4.0  # idle, but never 0 % (the ceiling clears below 4.8 %)

    snaps = [snap(t, cpu_percent=cpu(t)) for t in range(0, 1600, 5)]
    memo, actions = run(snaps, th)
    assert [t for t, _ in of_type(actions, Throttle)] == [160.0]
    assert [t for t, _ in of_type(actions, Unthrottle)] == [1120.0]
    assert not memo.throttled
    assert resolved(actions, "cpu_high")  # the 6 % ceiling's spike alert clears too


def test_cpu_clear_levels_are_reachable_for_every_valid_limit() -> None:
    from monitoring.rules import cpu_clear_level

    assert cpu_clear_level(85.0, 10.0) == 75.0  # unchanged for the usual limits
    assert cpu_clear_level(10.0, 10.0) == 8.0
    for limit in (0.5, 1.0, 5.0, 10.0, 12.0, 50.0, 100.0):
        assert 0 < cpu_clear_level(limit, 10.0) < limit
