"""deploy/prometheus/: promtool checks the config and the rules and runs the rules'
unit tests; every alert says how bad it is and where to look.

promtool comes from Debian's ``prometheus`` package (scripts/test.sh installs
it); without it these tests fail with the command to run, they do not skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "vigil-rules.yml"
RULES_TEST = PROMETHEUS_DIR / "rules-test.yml"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
SEVERITIES = {"critical", "warning", "info"}
# What the issue asks the rules to cover, by alert name.
REQUIRED_ALERTS = {
    "VigilDown",
    "VigilRestartLoop",
    "VigilMemoryHigh",
    "VigilMemoryLeak",
    "VigilBackupStale",
    "VigilBackupFailing",
    "VigilDiskFilling",
    "VigilWALLarge",
    "VigilLLMDown",
    "VigilTelegramDeaf",
    "VigilHTTPErrors",
    "VigilErrors",
    "VigilAuthFailures",
}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is needed for the deploy/prometheus tests: install Debian's prometheus "
            "package with 'sudo apt-get install prometheus' (or run scripts/test.sh, which does)"
        )
    return path


def promtool(*args: str | Path) -> str:
    result = subprocess.run(
        [tool("promtool"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PROMETHEUS_DIR,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(map(str, args))} failed:\n{output}"
    return output


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def doc_anchors(doc: Path) -> set[str]:
    return {
        github_anchor(line.lstrip("#"))
        for line in doc.read_text().splitlines()
        if re.match(r"#{1,6} ", line)
    }


@pytest.mark.slow  # runs promtool
def test_promtool_check_rules() -> None:
    output = promtool("check", "rules", RULES)
    assert f"SUCCESS: {len(alert_rules())} rules found" in output, output


@pytest.mark.slow  # runs promtool
def test_promtool_check_config() -> None:
    output = promtool("check", "config", CONFIG)
    assert "1 rule files found" in output, output


@pytest.mark.slow  # runs promtool
def test_promtool_rule_unit_tests() -> None:
    output = promtool("test", "rules", RULES_TEST)
    assert "SUCCESS" in output, output


def test_the_scrape_config_points_at_vigil_and_loads_the_rules() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    assert config["rule_files"] == [RULES.name]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "vigil"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:9000"]  # Vigil's defaults
    # /metrics is open (monitoring/routes.py): no token in the config
    assert "authorization" not in job and "bearer_token" not in job


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    assert set(names) >= REQUIRED_ALERTS, REQUIRED_ALERTS - set(names)
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook"}, name
        assert "scripts/" in annotations["description"] or "docs/" in annotations["description"]
        doc, _, anchor = annotations["runbook"].partition("#")
        assert (ROOT / doc).is_file(), f"{name}: {doc} does not exist"
        assert anchor in doc_anchors(ROOT / doc), f"{name}: {doc} has no section #{anchor}"


def test_the_commands_the_alerts_name_exist() -> None:
    import main

    commands = set(typer.main.get_command(main.cli).commands)  # type: ignore[attr-defined]
    scripts = {p.name for p in (ROOT / "scripts").iterdir()}
    named = 0
    for rule in alert_rules():
        text = " ".join(rule["annotations"].values())
        for command in re.findall(r"scripts/vigilctl ([a-z-]+)", text):
            assert command in commands, f"{rule['alert']}: no command scripts/vigilctl {command}"
            named += 1
        for script in re.findall(r"scripts/([\w.]+)", text):
            assert script in scripts, f"{rule['alert']}: scripts/{script} does not exist"
    assert named >= 10


def test_every_alert_has_a_unit_test_that_fires_it_and_one_that_does_not() -> None:
    cases = yaml.safe_load(RULES_TEST.read_text())["tests"]
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in cases:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert not names - fired, f"no unit test fires {sorted(names - fired)}"
    assert not names - quiet, f"no unit test keeps {sorted(names - quiet)} quiet"


def test_the_monitoring_docs_explain_every_alert() -> None:
    text = (ROOT / "docs" / "monitoring.md").read_text()
    section = text[text.index("## Prometheus and Grafana") :]
    rows = {
        m.group(1): m.group(2) for m in re.finditer(r"^\| `(Vigil\w+)` \| (\w+) \|", section, re.M)
    }
    expected = {rule["alert"]: rule["labels"]["severity"] for rule in alert_rules()}
    assert rows == expected
