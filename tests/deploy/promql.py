"""Which series a PromQL expression reads, and which series a live Vigil exports.

``selectors(expr)`` finds every metric name in an expression with the label
names its matchers use: string literals, ``[ranges]``, grouping lists
(``by (...)``, ``on (...)``, ...), function and aggregation names, keywords,
numbers and durations are not metric names. Grafana's ``$variables`` are
dropped first. A small lexer, not a full parser: ``tests/deploy`` tests it on
the constructs the shipped rules and dashboard use.

``exported(text)`` parses a ``/metrics`` page with prometheus_client's parser
into {sample name: label names}: a counter family ``x`` exports ``x_total``
(and ``x_created``), a histogram ``x_bucket`` / ``x_sum`` / ``x_count``, a
summary ``x`` / ``x_sum`` / ``x_count``, a gauge ``x``. Families without a
sample yet (a labelled counter nothing has counted) are there with no labels
known.
"""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

# Series that Prometheus makes itself, not the target.
PROMETHEUS_SERIES = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds"})

KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "and",
        "or",
        "unless",
        "inf",
        "nan",
        "atan2",
        # aggregation operators (a metric is never called so)
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    }
)
GROUPING = ("by", "without", "on", "ignoring", "group_left", "group_right")

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GRAFANA_VAR = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUP_LIST = re.compile(r"\b(" + "|".join(GROUPING) + r")\s*\([^)]*\)")
_MATCHERS = re.compile(r"\{([^}]*)\}")
_IDENT = re.compile(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)")
_LABEL_NAME = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


def _blank(match: re.Match[str]) -> str:
    return " " * len(match.group(0))


def selectors(expr: str) -> list[tuple[str, frozenset[str]]]:
    """[(metric name, label names matched)] in the order they appear."""
    text = _GRAFANA_VAR.sub(" ", expr)
    # strings become placeholders first so that "}" or "[" inside them cannot confuse us
    text = _STRING.sub(lambda m: '"' + "s" * (len(m.group(0)) - 2) + '"', text)
    text = _RANGE.sub(_blank, text)
    text = _GROUP_LIST.sub(lambda m: m.group(1) + " " * (len(m.group(0)) - len(m.group(1))), text)
    found: list[tuple[str, frozenset[str]]] = []
    matchers: dict[int, frozenset[str]] = {}
    for match in _MATCHERS.finditer(text):
        body = _STRING.sub("", match.group(1))
        matchers[match.start()] = frozenset(_LABEL_NAME.findall(body))
    text_no_matchers = _MATCHERS.sub(lambda m: "{" + " " * (len(m.group(0)) - 2) + "}", text)
    text_no_matchers = _STRING.sub(_blank, text_no_matchers)
    for match in _IDENT.finditer(text_no_matchers):
        name = match.group(1)
        rest = text_no_matchers[match.end() :].lstrip()
        if name in KEYWORDS or rest.startswith("("):
            continue  # a keyword, or a function / aggregation call
        brace = text_no_matchers.find("{", match.end())
        labels: frozenset[str] = frozenset()
        if brace != -1 and not text_no_matchers[match.end() : brace].strip():
            labels = matchers.get(brace, frozenset())
        found.append((name, labels))
    return found


def label_values_query(query: str) -> str:
    """The series expression of a Grafana ``label_values(expr, label)`` variable query."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query, re.S)
    if match:
        return match.group(1)
    match = re.fullmatch(r"\s*query_result\((.*)\)\s*", query, re.S)
    return match.group(1) if match else query


def exported(text: str) -> dict[str, set[str]]:
    """{sample name: label names seen} of a Prometheus text page."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
    }
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for suffix in suffixes.get(family.type, ("",)):
            out.setdefault(family.name + suffix, set())
        for sample in family.samples:
            labels = set(sample.labels) - {"le", "quantile"}
            out.setdefault(sample.name, set()).update(labels)
    return out


def problems(expr: str, series: dict[str, set[str]], where: str) -> list[str]:
    """What ``expr`` names that ``series`` does not have (metric or label name)."""
    out = []
    for name, labels in selectors(expr):
        if name in PROMETHEUS_SERIES:
            continue
        if name not in series:
            out.append(f"{where}: {name} is not exported by Vigil")
            continue
        known = series[name]
        extra = labels - known - {"job", "instance", "service"}
        if known and extra:
            out.append(f"{where}: {name} has no label {sorted(extra)} (has {sorted(known)})")
    return list(dict.fromkeys(out))
