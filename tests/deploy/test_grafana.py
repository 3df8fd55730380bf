"""deploy/grafana/vigil.json is an importable dashboard: it parses, asks for its
Prometheus data source on import, every panel has a unique id and a place on the
grid, and it covers what the operator needs. (That its queries name real series
is checked against a live Vigil in test_series.py.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.deploy.promql import selectors
from tests.deploy.test_series import DASHBOARD, dashboard_expressions, dashboard_panels

DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


def load() -> dict[str, Any]:
    dash: dict[str, Any] = json.loads(Path(DASHBOARD).read_text())
    return dash


def test_it_asks_for_the_prometheus_data_source_on_import() -> None:
    dash = load()
    assert dash["__inputs"] == [
        {
            "name": "DS_PROMETHEUS",
            "label": "Prometheus",
            "description": "The Prometheus that scrapes Vigil",
            "type": "datasource",
            "pluginId": "prometheus",
            "pluginName": "Prometheus",
        }
    ]
    # also a variable of that name, so a provisioned (not imported) copy works too
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert dash["id"] is None and dash["uid"] == "vigil-overview"


def test_panels_have_unique_ids_a_data_source_queries_and_a_place() -> None:
    panels = dashboard_panels(load()["panels"])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    cells: dict[tuple[int, int], int] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                other = cells.setdefault((x, y), panel["id"])
                assert other == panel["id"], f"panels {other} and {panel['id']} overlap"
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["description"], panel["id"]
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_it_covers_health_resources_turns_restarts_backups_http_and_alerts() -> None:
    named = {name for _, expr in dashboard_expressions() for name, _ in selectors(expr)}
    wanted = {
        "vigil_health_score",
        "vigil_process_memory_bytes",
        "vigil_process_cpu_percent",
        "vigil_turns_total",
        "vigil_turn_duration_seconds_bucket",
        "vigil_restarts_total",
        "vigil_stops_total",
        "vigil_backup_last_success_timestamp_seconds",
        "vigil_backup_failures_total",
        "vigil_http_requests_total",
        "vigil_http_request_duration_seconds_bucket",
        "vigil_errors_total",
        "vigil_alerts_active",
        "vigil_llm_tokens_total",
        "vigil_llm_time_to_first_token_seconds_bucket",
        "vigil_budget_refusals_total",
        "ALERTS",
    }
    assert wanted <= named, wanted - named
