"""The supervisor: keeps the chat server and the Huey worker running.

``python main.py supervise`` runs this in the foreground (``start.sh`` puts it
in the background, systemd runs it as the service's main process). It has no
event loop of its own to hang: one plain loop spawns the children, reaps
them, restarts them with exponential backoff, stops restarting a child that
flaps (marked failed, one critical alert, the others keep running; it is
tried again every ``VIGIL_SUPERVISOR_RETRY_FAILED_S`` and the alert resolved
once it runs healthy), retries a child that exits with a configuration or
permission problem (exit 2 or 78) just as slowly, and SIGKILLs a server whose
``/health/live`` stopped answering. Every decision is logged and
every restart is handed to ``record`` (the ``restarts`` table). Exit code 75
from a child means "restart requested": no backoff penalty.

The decisions are ``policy.py``'s; storage is injected (``record``, ``alerts``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from core.process import RESTART_REQUESTED
from core.restarts import RestartEvent
from monitoring.supervisor.children import ChildSpec, ChildState
from monitoring.supervisor.policy import CONFIG_EXITS, Policy, describe_exit
from monitoring.supervisor.process import die_with_parent, is_live, read_rss_mb
from monitoring.supervisor.state_file import StateFile

log = logging.getLogger(__name__)

Recorder = Callable[[RestartEvent], None]
# alert(alert_type, message, event="raised" | "resolved")
Alerter = Callable[..., None]
Spawner = Callable[..., Any]  # subprocess.Popen, or a stand-in with poll/kill/send_signal/wait
STARTUP_ALLOWANCE_S = 30.0
# A child retried after the flap limit counts as healthy again after this long
# (and, when watched, once /health/live answered).
HEALTHY_AFTER_S = 30.0
START_AFTER_MAX_S = 15.0


def _child_setup(parent_pid: int) -> Callable[[], None]:
    """A child's ``preexec_fn``: die with the supervisor, and SIGHUP ignored until the
    child installs its own handler (a HUP forwarded during its start-up must not
    kill it: the default action of SIGHUP is to terminate)."""
    die = die_with_parent(parent_pid)

    def setup() -> None:
        die()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    return setup


@contextlib.contextmanager
def logged(what: str) -> Iterator[None]:
    """Storage trouble must never take the supervisor down: log and carry on."""
    try:
        yield
    except Exception:  # loop boundary
        log.exception("supervisor: failed %s", what)


class Supervisor:
    """Spawns, watches and restarts the children; ``run()`` returns the exit code."""

    def __init__(
        self,
        children: list[ChildSpec],
        policy: Policy,
        *,
        state_file: Path | None = None,
        record: Recorder | None = None,
        alerts: list[Alerter] | None = None,
        tick_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        spawn: Spawner = subprocess.Popen,
        open_alerts: Callable[[], list[tuple[str, str]]] | None = None,
        reloader: Any = None,
    ) -> None:
        self.policy = policy
        self.children = [ChildState(spec) for spec in children]
        self.state = StateFile(state_file)
        self.record = record or (lambda event: None)
        self.alerts = list(alerts or [])
        self.tick_s = tick_s
        self.clock = clock
        self.spawn = spawn
        self.open_alerts = open_alerts
        self._adopted: dict[str, list[str]] = {}  # child -> more alert types to resolve
        self.reloader = reloader  # SIGHUP: start() it; poll() it every tick
        self._hup = False
        self.started_at = time.time()
        self._procs: dict[str, Any] = {}
        self._stop_signal: int | None = None
        self._signals = 0
        self._next_live_check = 0.0

    # --- main loop --------------------------------------------------------------
    def run(self) -> int:
        if not self.state.lock():
            return 1
        self._install_signals()
        log.info(
            "supervisor started (pid %d): children %s; backoff %g-%g s, flap limit %d in %g s, "
            "watchdog %g s",
            os.getpid(),
            ", ".join(c.spec.name for c in self.children),
            self.policy.backoff_initial_s,
            self.policy.backoff_max_s,
            self.policy.flap_max,
            self.policy.flap_window_s,
            self.policy.watchdog_timeout_s,
        )
        with logged("reading the alerts left open by the last run"):
            self.adopt_open_alerts()
        started = self.clock()
        for child in self.children:
            if child.spec.start_after is None:
                self._spawn(child)
            else:
                # Start-up is CPU-bound (imports): let the server get there first.
                child.state, child.next_start_mono = "waiting", started + START_AFTER_MAX_S
        self._write_state()
        while self._stop_signal is None:
            if self._hup:
                self._hup = False
                self.reload()
            if self.reloader is not None:
                with logged("reloading the settings"):
                    self.reloader.poll()
            self.tick(self.clock())
            time.sleep(self.tick_s)
        self._shutdown()
        return 0

    def tick(self, now: float) -> None:
        """One pass: reap exits, start children whose backoff ended, run the watchdog."""
        check_live = now >= self._next_live_check
        if check_live:
            # Poll often until every watched child answered once: the worker
            # waits for the server, and start-up figures count every 0.1 s.
            is_settled = all(c.live_seen for c in self.children if c.spec.live_url and c.pid)
            poll = (
                self.policy.watchdog_poll_s if is_settled else min(0.1, self.policy.watchdog_poll_s)
            )
            self._next_live_check = now + poll
        for child in self.children:
            proc = self._procs.get(child.spec.name)
            if proc is not None:
                code = proc.poll()
                if code is not None:
                    self._on_exit(child, code, now)
                elif check_live:
                    child.last_rss_mb = read_rss_mb(proc.pid) or child.last_rss_mb
                    self._watchdog(child, proc, now)
            elif self._is_due(child, now):
                self._spawn(child)
            if child.alerted and self._is_healthy(child, now):
                self._resolve(child)

    # --- children ---------------------------------------------------------------
    def _spawn(self, child: ChildState) -> None:
        env = dict(os.environ)
        # systemd's WATCHDOG_PID names the supervisor; the server pings itself.
        env.pop("WATCHDOG_PID", None)
        if child.spec.live_url is None:
            env.pop("NOTIFY_SOCKET", None)
            env.pop("WATCHDOG_USEC", None)
        env.update(child.spec.env or {})
        try:
            proc = self.spawn(
                child.spec.argv,
                env=env,
                stdin=subprocess.DEVNULL,
                preexec_fn=_child_setup(os.getpid()),  # no threads here: safe
            )
        except OSError as exc:
            log.error("cannot start %s (%s): %s", child.spec.name, child.spec.argv[0], exc)
            child.started_mono = self.clock()
            self._on_exit(child, 127, child.started_mono)
            return
        now = self.clock()
        self._procs[child.spec.name] = proc
        child.pid, child.state = proc.pid, "running"
        child.started_mono, child.started_at = now, time.time()
        child.last_live_ok, child.watchdog_fired, child.live_seen = now, False, False
        child.next_start_at = None
        log.info("started %s (pid %d): %s", child.spec.name, proc.pid, " ".join(child.spec.argv))
        self._write_state()

    def _is_due(self, child: ChildState, now: float) -> bool:
        if child.state in ("backoff", "failed"):  # failed: the slow retry
            return now >= child.next_start_mono
        if child.state == "waiting":
            after = child.spec.start_after
            is_ready = any(c.spec.name == after and c.live_seen for c in self.children)
            return is_ready or now >= child.next_start_mono
        return False

    def _on_exit(self, child: ChildState, code: int, now: float) -> None:
        self._procs.pop(child.spec.name, None)
        uptime = round(now - child.started_mono, 2) if child.started_mono else 0.0
        sig = -code if code < 0 else None
        child.pid = None
        child.last_exit = {
            "code": code if code >= 0 else None,
            "signal": sig,
            "at": time.time(),
            "uptime_s": uptime,
        }
        if self._stop_signal is not None:
            child.state = "stopped"
            log.info("%s exited (%s) during shutdown", child.spec.name, describe_exit(code))
            self._write_state()
            return
        if code in CONFIG_EXITS and not child.watchdog_fired:
            self._retry_slowly(child, code, uptime, now)
            return
        planned = code in (0, RESTART_REQUESTED) and not child.watchdog_fired
        reason = "watchdog" if child.watchdog_fired else ("crash" if not planned else "")
        decision = self.policy.decide_restart(
            planned=planned,
            attempt=child.attempt,
            uptime_s=uptime,
            restarts=child.restarts,
            planned_restarts=child.planned_restarts,
            now=now,
        )
        child.attempt = decision.attempt
        if decision.action == "fail":
            self._fail(child, code, uptime)
            return
        delay = decision.delay_s
        child.state, child.backoff_s = "backoff", delay
        child.next_start_mono = now + delay
        child.next_start_at = time.time() + delay
        if planned:
            log.info(
                "%s exited (%s): restarting in %.2f s", child.spec.name, describe_exit(code), delay
            )
            if not child.spec.records_own_exits:
                reason = "forced" if code == RESTART_REQUESTED else "signal"
        else:
            log.warning(
                "%s exited (%s) after %.1f s: restart attempt %d in %.2f s",
                child.spec.name,
                describe_exit(code),
                uptime,
                child.attempt,
                delay,
            )
        child.last_exit["reason"] = reason or "requested"
        if reason:
            self._record(child, reason, code, uptime, backoff=delay)
        self._write_state()

    def _fail(self, child: ChildState, code: int, uptime: float) -> None:
        retry = self.policy.retry_failed_s
        self._schedule(child, "failed", retry)
        message = (
            f"{child.spec.name} restarted {self.policy.flap_max} times within "
            f"{self.policy.flap_window_s:g} s and exited again ({describe_exit(code)}); "
            f"it is tried again every {retry:g} s (VIGIL_SUPERVISOR_RETRY_FAILED_S)"
        )
        log.critical("flap limit: %s", message)
        if child.last_exit is not None:
            child.last_exit["reason"] = "flap_limit"
        self._record(child, "flap_limit", code, uptime, backoff=retry, detail=message)
        self._raise(child, "restart_flap_limit", message)
        self._write_state()

    def _retry_slowly(self, child: ChildState, code: int, uptime: float, now: float) -> None:
        """Exit 2/78: the setup (settings, permissions) must be fixed; looping will not help."""
        retry = self.policy.retry_failed_s
        self._schedule(child, "backoff", retry)
        message = (
            f"{child.spec.name} exited with a configuration or permission problem "
            f"({describe_exit(code)}; its message is in logs/system.log or stdout.log); "
            f"trying again in {retry:g} s"
        )
        log.error("%s", message)
        if child.last_exit is not None:
            child.last_exit["reason"] = "config_error"
        self._record(child, "config_error", code, uptime, backoff=retry, detail=message)
        self._raise(child, "restart_config_error", message)
        self._write_state()

    def _schedule(self, child: ChildState, state: str, delay: float) -> None:
        child.state, child.backoff_s = state, delay
        child.next_start_mono = self.clock() + delay
        child.next_start_at = time.time() + delay

    def _raise(self, child: ChildState, alert_type: str, message: str) -> None:
        """One critical alert per episode; resolved once the child runs healthy."""
        if child.alerted:
            return
        child.alerted = alert_type
        for alert in self.alerts:  # each on its own: a full disk must not stop the webhook
            with logged(f"raising the {alert_type} alert"):
                alert(alert_type, message)

    def adopt_open_alerts(self) -> None:
        """Take over the alerts an earlier supervisor raised and never resolved.

        The operator's usual fix for a flapping child is to correct the cause and
        stop/start the service; the alert must then resolve once that child runs
        healthy, not stay open for ever because the new supervisor never raised
        it. An alert for a child that is no longer supervised is resolved now.
        """
        if self.open_alerts is None:
            return
        by_name = {c.spec.name: c for c in self.children}
        for alert_type, name in self.open_alerts():
            child = by_name.get(name)
            if child is not None:
                if child.alerted is None:
                    child.alerted = alert_type
                else:  # a second open type for the same child: resolved with the first
                    self._adopted.setdefault(name, []).append(alert_type)
                log.info("%s: open alert %s taken over from the last run", name, alert_type)
                continue
            message = f"{name} is no longer supervised"
            log.warning("%s: %s resolved", message, alert_type)
            for alert in self.alerts:
                with logged(f"resolving the {alert_type} alert"):
                    alert(alert_type, message, event="resolved")

    def _is_healthy(self, child: ChildState, now: float) -> bool:
        if child.state != "running" or now - child.started_mono < HEALTHY_AFTER_S:
            return False
        return child.live_seen or child.spec.live_url is None

    def _resolve(self, child: ChildState) -> None:
        alert_type, child.alerted = child.alerted, None
        message = f"{child.spec.name} runs again (up {HEALTHY_AFTER_S:g} s)"
        # the one raised in this run, plus any other type an earlier run left open
        types = [alert_type, *self._adopted.pop(child.spec.name, [])]
        for kind in dict.fromkeys(t for t in types if t):
            log.warning("%s: %s resolved", message, kind)
            for alert in self.alerts:
                with logged(f"resolving the {kind} alert"):
                    alert(kind, message, event="resolved")
        self._write_state()

    def _watchdog(self, child: ChildState, proc: Any, now: float) -> None:
        url = child.spec.live_url
        if url is None or child.watchdog_fired:
            return
        if is_live(url, timeout=min(2.0, self.policy.watchdog_timeout_s / 2)):
            if not child.live_seen:
                child.live_seen = True
                log.info("%s answers %s", child.spec.name, url)
                self._write_state()
            child.last_live_ok = now
            return
        silent = now - child.last_live_ok
        # Until the first answer the child is still starting (imports, database,
        # Telegram): allow it at least STARTUP_ALLOWANCE_S before calling it hung.
        limit = self.policy.watchdog_timeout_s
        if not child.live_seen:
            limit = max(limit, STARTUP_ALLOWANCE_S)
        if silent < limit:
            return
        log.error(
            "watchdog: %s (pid %d) has not answered %s for %.1f s; sending SIGKILL",
            child.spec.name,
            proc.pid,
            url,
            silent,
        )
        child.watchdog_fired = True
        with contextlib.suppress(ProcessLookupError):
            proc.kill()

    def _record(
        self,
        child: ChildState,
        reason: str,
        code: int,
        uptime: float,
        *,
        backoff: float | None,
        detail: str = "",
    ) -> None:
        if reason == "watchdog" and not detail:
            detail = (
                f"no answer from {child.spec.live_url} for {self.policy.watchdog_timeout_s:g} s"
            )
        event = RestartEvent(
            child=child.spec.name,
            reason=reason,
            at=time.time(),
            exit_code=code if code >= 0 else None,
            signal=-code if code < 0 else None,
            uptime_s=uptime,
            last_rss_mb=child.last_rss_mb,
            attempt=child.attempt,
            backoff_s=backoff,
            detail=detail,
        )
        with logged("recording a restart"):
            self.record(event)

    # --- reloading ---------------------------------------------------------------
    def reload(self) -> None:
        """SIGHUP: reopen the logs, reload the log settings, forward HUP to the children."""
        log.info("SIGHUP: reopening the log files and reloading; forwarded to the children")
        if self.reloader is not None:
            with logged("reloading the settings"):
                self.reloader.start()
        for name, proc in self._procs.items():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGHUP)
                log.debug("SIGHUP forwarded to %s (pid %d)", name, proc.pid)

    # --- stopping ----------------------------------------------------------------
    def _install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_hup(self, sig: int, frame: FrameType | None) -> None:
        self._hup = True  # acted on by the loop, never in the handler

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._stop_signal is None:
            self._stop_signal = sig
        elif sig == signal.SIGINT or self._signals > 2:
            # A second Ctrl-C: the operator does not want to wait for the drain.
            for proc in self._procs.values():
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()

    def _shutdown(self) -> None:
        name = signal.Signals(self._stop_signal or signal.SIGTERM).name
        log.info("supervisor stopping (%s): asking children to finish", name)
        for child in self.children:
            if child.state in ("backoff", "waiting", "failed"):
                child.state = "stopped"
        self._write_state()  # "stopping" before the children hear of it
        for proc in self._procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = self.clock() + self.policy.grace_s + self.policy.stop_timeout_s
        while self._procs and self.clock() < deadline:
            self.tick(self.clock())
            time.sleep(self.tick_s)
        for name, proc in list(self._procs.items()):
            log.warning("%s (pid %d) still running after the grace period: SIGKILL", name, proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
            self._procs.pop(name, None)
        self._write_state(stopped=True)
        log.info("supervisor stopped")

    # --- state file ----------------------------------------------------------------
    def snapshot(self, *, stopped: bool = False) -> dict[str, Any]:
        now = self.clock()
        return {
            "pid": os.getpid(),
            "started_at": self.started_at,
            "updated_at": time.time(),
            "stopped": stopped,
            # Read by the server on SIGTERM: a stop, not a restart (core.lifecycle).
            "stopping": self._stop_signal is not None,
            "policy": {
                "backoff_initial_s": self.policy.backoff_initial_s,
                "backoff_max_s": self.policy.backoff_max_s,
                "backoff_reset_s": self.policy.backoff_reset_s,
                "flap_max": self.policy.flap_max,
                "flap_window_s": self.policy.flap_window_s,
                "watchdog_timeout_s": self.policy.watchdog_timeout_s,
                "retry_failed_s": self.policy.retry_failed_s,
            },
            "children": {c.spec.name: c.public(now, self.policy) for c in self.children},
        }

    def _write_state(self, *, stopped: bool = False) -> None:
        with logged("writing the supervisor state file"):
            self.state.write(self.snapshot(stopped=stopped))
