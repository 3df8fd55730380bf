"""Every series the alert rules, their unit tests and the Grafana dashboard name is
one a real running Vigil exports, with the labels it really has.

The server is the real app under uvicorn on loopback (tests/conftest.py
LiveServer); before the scrape it answers a turn, takes a backup, refuses a
wrong token and a missing page, so the labelled families have samples (and the
backup's last-success series, which appears with the first good backup). Grafana's checks of its
own (unique panel ids, the data source input, the layout) are in
test_grafana.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import LiveServer
from tests.deploy.promql import exported, label_values_query, problems, selectors

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "vigil-rules.yml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "rules-test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "vigil.json"


def dashboard_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for panel in panels:
        out.append(panel)
        out += dashboard_panels(panel.get("panels", []))
    return out


def dashboard_expressions() -> list[tuple[str, str]]:
    """[(where, PromQL)] of every panel target and every query variable."""
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dashboard_panels(dash["panels"]):
        for target in panel.get("targets", []):
            where = f"panel {panel['id']} {panel['title']!r} {target['refId']}"
            out.append((where, target["expr"]))
    for variable in dash["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            out.append((f"variable {variable['name']}", label_values_query(text)))
    return out


def rule_expressions() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(f"rule {r['alert']}", r["expr"]) for g in groups for r in g["rules"]]


def rule_test_series() -> list[tuple[str, str]]:
    cases = yaml.safe_load(RULES_TEST.read_text())["tests"]
    return [
        (f"rules-test {case['name']!r}", series["series"])
        for case in cases
        for series in case["input_series"]
    ]


@contextlib.contextmanager
def cli_side_effects_undone() -> Iterator[None]:
    """The CLI sets up logging and the umask like any entry point; undo both."""
    root = logging.getLogger()
    handlers, level, umask = list(root.handlers), root.level, os.umask(0o022)
    os.umask(umask)
    try:
        yield
    finally:
        os.umask(umask)
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
            handler.close()
        for handler in [h for h in handlers if h not in root.handlers]:
            root.addHandler(handler)
        root.setLevel(level)


@pytest.fixture(scope="module")
def live_series(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """{series: label names} scraped from a real Vigil that has done some work:
    a turn, a backup (``main.py backup``, in this process), a wrong token, a 404."""
    from main import cli
    from tests.conftest import make_settings
    from tests.fake_llm import FakeLLM
    from tests.operator_cli import cli_env

    tmp_path = tmp_path_factory.mktemp("vigil")
    with FakeLLM() as llm:
        settings = make_settings(tmp_path, llm_base_url=llm.url)
        server = LiveServer(settings).start()
        try:
            assert server.chat("metrics", "hello").status_code == 200
            with cli_side_effects_undone():
                backup = CliRunner().invoke(cli, ["backup"], env=cli_env(settings))
            assert backup.exit_code == 0, backup.output
            with httpx.Client(base_url=server.url, timeout=10) as anonymous:
                wrong = {"Authorization": "Bearer wrong"}
                assert anonymous.post("/resources/cleanup", headers=wrong).status_code == 403
                assert anonymous.get("/no-such-page").status_code == 404
                response = anonymous.get("/metrics")
            assert response.status_code == 200, response.text
            return exported(response.text)
        finally:
            server.stop()


def test_the_checker_reads_names_and_labels_and_catches_unknown_ones(
    live_series: dict[str, set[str]],
) -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, route) (rate(x_bucket{route=~"$r", m!="}"}'
        "[$__rate_interval])))"
        ' / ignoring (scope) y{scope="tree"} offset 5m > 1e6 and on (job) up{job="vigil"}'
    )
    assert selectors(expr) == [
        ("x_bucket", frozenset({"route", "m"})),
        ("y", frozenset({"scope"})),
        ("up", frozenset({"job"})),
    ]
    assert problems("vigil_health_score > 1", live_series, "ok") == []
    assert problems("rate(vigil_turns_total[5m])", live_series, "ok") == []
    assert problems("vigil_helth_score < 60", live_series, "typo") == [
        "typo: vigil_helth_score is not exported by Vigil"
    ]
    assert problems('vigil_memory_bytes{scop="tree"}', live_series, "label") == [
        "label: vigil_memory_bytes has no label ['scop'] (has ['scope'])"
    ]
    # a counter is exported as _total, a histogram as _bucket/_sum/_count, not bare
    assert "vigil_turns" not in live_series and "vigil_turns_total" in live_series


def test_the_alert_rules_name_only_series_vigil_exports(live_series: dict[str, set[str]]) -> None:
    found = [p for where, expr in rule_expressions() for p in problems(expr, live_series, where)]
    assert found == [], "\n".join(found)


def test_the_rule_unit_tests_feed_only_series_vigil_exports(
    live_series: dict[str, set[str]],
) -> None:
    found = [p for where, expr in rule_test_series() for p in problems(expr, live_series, where)]
    assert found == [], "\n".join(found)


def test_the_dashboard_names_only_series_vigil_exports(live_series: dict[str, set[str]]) -> None:
    expressions = dashboard_expressions()
    assert len(expressions) >= 30
    found = [p for where, expr in expressions for p in problems(expr, live_series, where)]
    assert found == [], "\n".join(found)
