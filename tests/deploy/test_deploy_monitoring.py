"""Monitoring as deployed: the dashboard and alert rules name only series the code exports,
the prod overlay renders the PodMonitor, the rules and the dashboard, the monitor scrapes
every metrics port, and every object carries the recommended app.kubernetes.io labels."""

from __future__ import annotations

import importlib
import json
import re

import pytest

from deploy import catalog, monitoring, policy, tool
from runtime import metrics
from tests.support.processes import ROOT

# Every module that declares series (checked below against a scan of the source).
METRIC_MODULES = ("runtime.metrics", "runtime.grpc_server", "services.mining.miner",
                  "services.triplegen.writers.llm", "services.embedding.worker",
                  "services.training.worker", "services.search.shard")
BUILTIN_SERIES = {"up"}  # Prometheus's own, one per scraped target
RECOMMENDED = tuple(f"app.kubernetes.io/{k}" for k in (
    "name", "instance", "version", "component", "part-of", "managed-by"))
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                 "unless", "bool", "offset", "le", "inf", "nan"}


def promql_series(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers left once strings, label
    matchers, ranges and grouping clauses are removed, that are not function calls."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    s = re.sub(r"\{[^}]*\}", "", s)
    s = re.sub(r"\[[^\]]*\]", "", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", s)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        word, rest = m.group(0), s[m.end():]
        if word.lower() in _PROMQL_WORDS or re.match(r"\s*\(", rest):
            continue
        if m.start() and (s[m.start() - 1].isdigit() or s[m.start() - 1] == "."):
            continue  # a number such as 1e-9
        names.add(word)
    return names


@pytest.fixture(scope="module")
def exported() -> set[str]:
    for module in METRIC_MODULES:
        importlib.import_module(module)
    return metrics.exposed_names()


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[policy.Doc]]:
    try:
        tool.kubectl_path()
    except tool.ToolError as exc:
        pytest.skip(f"{exc} (needed to render the overlays)")
    return {env: policy.load_docs(tool.render(env)) for env in ("prod", "dev")}


def _dashboard() -> dict:
    return json.loads((monitoring.OUT_DIR / monitoring.DASHBOARD_FILE).read_text())


def test_promql_series_extraction():
    assert promql_series('sum by (group, topic) (max by (group, topic, partition) '
                         '(magiclens_kafka_consumer_lag_records{job="x"}))') == {
        "magiclens_kafka_consumer_lag_records"}
    assert promql_series('histogram_quantile(0.95, sum by (le) (rate(a_bucket[5m]))) / '
                         "clamp_min(b, 1e-9) and on () up > 0") == {"a_bucket", "b", "up"}


def test_every_metric_declaring_module_is_checked():
    declaring = set()
    for path in [*(ROOT / "runtime").glob("*.py"), *(ROOT / "services").rglob("*.py")]:
        if re.search(r"metrics\.(counter|gauge|histogram)\(|^def (counter|gauge)\(",
                     path.read_text(), re.M):
            declaring.add(".".join(path.relative_to(ROOT).with_suffix("").parts))
    assert declaring == set(METRIC_MODULES)


def test_generated_monitoring_files_are_current():
    assert monitoring.main(["--check"]) == 0, "run: python -m deploy.monitoring"


def test_dashboard_panels_read_only_exported_series(exported):
    panels = [p for p in _dashboard()["panels"] if p["type"] != "row"]
    used: set[str] = set()
    for panel in panels:
        names = set().union(*(promql_series(t["expr"]) for t in panel["targets"]))
        assert names, f"panel {panel['title']!r} reads no series"
        unknown = names - exported - BUILTIN_SERIES
        assert not unknown, f"panel {panel['title']!r} reads series nobody exports: {unknown}"
        used |= names
    # What operators asked for, each on the dashboard.
    for wanted in ("magiclens_kafka_consumer_lag_records", "magiclens_outbox_backlog_rows",
                   "magiclens_outbox_oldest_age_seconds", "magiclens_dead_letters_total",
                   "magiclens_pipeline_items_total", "magiclens_llm_requests_total",
                   "magiclens_llm_request_seconds_bucket", "magiclens_llm_cache_lookups_total",
                   "magiclens_embedding_backlog_images", "magiclens_training_step",
                   "magiclens_training_loss", "magiclens_training_examples_total",
                   "magiclens_index_vectors", "magiclens_index_update_age_seconds", "up"):
        assert wanted in used, wanted
    assert len({p["id"] for p in _dashboard()["panels"]}) == len(_dashboard()["panels"])


def test_prod_overlay_renders_monitor_rules_and_dashboard(rendered, exported):
    docs = rendered["prod"]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("PodMonitor", "magiclens"), ("PrometheusRule", "magiclens"),
            ("ConfigMap", "magiclens-dashboard")} <= kinds
    assert not policy.all_problems(docs)
    rules = [r for d in docs if d["kind"] == "PrometheusRule"
             for g in d["spec"]["groups"] for r in g["rules"]]
    alerts = {r["alert"] for r in rules}
    assert {"MagicLensConsumerLagHigh", "MagicLensOutboxBacklogOld", "MagicLensDeadLetters",
            "MagicLensShardDown", "MagicLensIndexStale"} <= alerts
    for r in rules:
        names = promql_series(r["expr"])
        assert names and not names - exported - BUILTIN_SERIES, (r["alert"], names)
    dash = next(d for d in docs if d["metadata"]["name"] == "magiclens-dashboard")
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dash["data"][monitoring.DASHBOARD_FILE]) == _dashboard()
    # The monitor scrapes every metrics port of every workload (the worker's too).
    monitor = next(d for d in docs if d["kind"] == "PodMonitor")
    ports = {ep["port"] for ep in monitor["spec"]["podMetricsEndpoints"]}
    for w in catalog.WORKLOADS:
        if not (w.metrics_port or (w.sidecar and w.sidecar.metrics_port)):
            continue
        pod = next(d for d in docs if d.get("kind") in policy.WORKLOAD_KINDS
                   and d["metadata"]["name"] == w.name)["spec"]["template"]
        named = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
        assert policy._matches(monitor["spec"]["selector"]["matchLabels"],
                               pod["metadata"]["labels"]), w.name
        assert {"metrics", "worker-metrics"} & named <= ports and named & ports, w.name
    assert not any(d["kind"] == "PodMonitor" for d in rendered["dev"])  # prod only


def test_policy_refuses_a_monitor_naming_a_missing_port(rendered):
    docs = [json.loads(json.dumps(d)) for d in rendered["prod"]]
    monitor = next(d for d in docs if d["kind"] == "PodMonitor")
    monitor["spec"]["podMetricsEndpoints"].append({"port": "metricz"})
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    rule["spec"]["groups"][0]["rules"].append({"alert": "NoExpr", "labels": {}})
    problems = policy.custom_resource_problems(docs)
    assert any("'metricz'" in p for p in problems), problems
    assert any("NoExpr" in p for p in problems), problems


@pytest.mark.parametrize("env", ["prod", "dev"])
def test_every_object_carries_the_recommended_labels(rendered, env):
    missing = []
    for d in rendered[env]:
        templates = [d["metadata"]]
        if d.get("kind") in policy.WORKLOAD_KINDS:
            templates.append(d["spec"]["template"]["metadata"])
        for meta in templates:
            lacks = [k for k in RECOMMENDED if not meta.get("labels", {}).get(k)]
            if lacks:
                missing.append(f"{policy.kn(d)}: {lacks}")
    assert not missing, missing
    instance = {d["metadata"]["labels"]["app.kubernetes.io/instance"] for d in rendered[env]}
    assert instance == {f"magiclens-{env}"}
    versions = {d["metadata"]["labels"]["app.kubernetes.io/version"] for d in rendered[env]}
    assert versions == {catalog.IMAGE_TAG}
