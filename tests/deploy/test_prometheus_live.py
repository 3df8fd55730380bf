"""A real Prometheus (Debian's /usr/bin/prometheus) scrapes a real Vigil on loopback
with the shipped scrape job and rules, only faster (1 s scrape and evaluation).

It asserts through Prometheus' HTTP API that every series Vigil's /metrics has is
stored, that every shipped rule evaluates without an error, that every query of
the Grafana dashboard is valid PromQL (most already with data), that a burst of wrong
admin tokens fires VigilAuthFailures (the rule has no ``for``), and that
stopping Vigil turns ``up`` to 0 and puts VigilDown in ``pending`` (its ``for``
of 2 minutes is longer than a test).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy.test_prometheus import CONFIG, RULES, alert_rules, tool
from tests.deploy.test_series import dashboard_expressions
from tests.fake_llm import FakeLLM, free_port
from tests.processes import VigilProcess, vigil, vigil_env, wait_for

pytestmark = pytest.mark.slow


class Prometheus:
    def __init__(self, tmp_path: Path, target: str) -> None:
        config = yaml.safe_load(CONFIG.read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config["rule_files"] = [str(RULES)]
        (job,) = config["scrape_configs"]
        job["scrape_timeout"] = "1s"
        job["static_configs"][0]["targets"] = [target]
        config_file = tmp_path / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = tmp_path / "prometheus.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    tool("prometheus"),
                    f"--config.file={config_file}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address={self.url.removeprefix('http://')}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.client = httpx.Client(base_url=self.url, timeout=5)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited {self.proc.returncode}: {self.output()}")
        try:
            return self.client.get("/-/ready").status_code == 200
        except httpx.HTTPError:
            return False

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def api(self, path: str, **params: Any) -> Any:
        response = self.client.get(f"/api/v1/{path}", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]  # type: ignore[no-any-return]

    def alerts(self, name: str) -> list[dict[str, Any]]:
        return [a for a in self.api("alerts")["alerts"] if a["labels"]["alertname"] == name]

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[VigilProcess]:
    with FakeLLM() as llm:
        env = vigil_env(tmp_path, llm.url, governor_enabled=True)
        with vigil(tmp_path, env, "serve") as process:
            process.wait_live()
            yield process


@pytest.fixture
def prometheus(tmp_path: Path, server: VigilProcess) -> Iterator[Prometheus]:
    instance = Prometheus(tmp_path, server.url.removeprefix("http://"))
    try:
        wait_for(instance.ready, 20, "prometheus to be ready")
        yield instance
    finally:
        instance.stop()


def test_prometheus_scrapes_vigil_evaluates_the_rules_and_fires_alerts(
    server: VigilProcess, prometheus: Prometheus
) -> None:
    target = server.url.removeprefix("http://")
    wait_for(
        lambda: prometheus.query(f'up{{job="vigil", instance="{target}"}} == 1'),
        15,
        "prometheus to scrape vigil",
        interval=0.2,
    )
    # every series on Vigil's page is stored in Prometheus (there may be one more scrape
    # between the two reads, so the page is read after a stored name list was taken)
    stored = set(prometheus.api("label/__name__/values", **{"match[]": '{job="vigil"}'}))
    page = server.client.get("/metrics").text
    on_page = {line.split("{")[0].split(" ")[0] for line in page.splitlines()}
    on_page -= {""}
    on_page = {n for n in on_page if not n.startswith("#") and not n.endswith("_created")}
    assert "vigil_turns_total" in on_page
    assert on_page - stored == set(), f"on /metrics but not in Prometheus: {on_page - stored}"

    # every shipped rule is loaded and evaluates without an error
    def evaluated() -> list[dict[str, Any]] | None:
        rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        done = all(r.get("lastEvaluation", "").startswith("20") for r in rules)
        return rules if rules and done else None

    rules = wait_for(evaluated, 10, "the rules to be evaluated", interval=0.2)
    assert {r["name"] for r in rules} == {r["alert"] for r in alert_rules()}
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []

    # every dashboard query is valid PromQL (Grafana's variables filled in as Grafana does)
    answered = 0
    for where, expr in dashboard_expressions():
        query = expr.replace("$__rate_interval", "1m").replace("$instance", ".*")
        response = prometheus.client.get("/api/v1/query", params={"query": query})
        assert response.status_code == 200, f"{where}: {query}: {response.text}"
        answered += bool(response.json()["data"]["result"])
    assert answered >= 20, answered  # most panels show data already

    # a burst of wrong admin tokens fires VigilAuthFailures
    wait_for(
        lambda: prometheus.query("vigil_auth_failures_total"),
        10,
        "vigil_auth_failures_total to be scraped once before the burst",
        interval=0.2,
    )
    assert prometheus.alerts("VigilAuthFailures") == []
    wrong = {"Authorization": "Bearer not-the-token"}
    for _ in range(30):
        assert server.client.post("/resources/cleanup", headers=wrong).status_code == 403
    (alert,) = wait_for(
        lambda: [a for a in prometheus.alerts("VigilAuthFailures") if a["state"] == "firing"],
        15,
        "VigilAuthFailures to fire",
        interval=0.2,
    )
    assert alert["labels"]["severity"] == "warning"
    assert alert["labels"]["instance"] == target
    assert "failed admin-token attempts" in alert["annotations"]["summary"]

    # Vigil stops: up turns 0 and VigilDown is pending (for: 2m)
    server.stop()
    wait_for(lambda: prometheus.query('up{job="vigil"} == 0'), 15, "up to turn 0", interval=0.2)
    (down,) = wait_for(
        lambda: prometheus.alerts("VigilDown"), 10, "VigilDown to be pending", interval=0.2
    )
    assert down["state"] == "pending" and down["labels"]["severity"] == "critical"
