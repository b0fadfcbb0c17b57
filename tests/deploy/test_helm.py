"""The Helm chart, alert rules and dashboard, checked with the real tools.

The chart is rendered by Helm's own Go engine (helm-python-sdk bundles it) and every manifest
is validated against the Kubernetes OpenAPI schemas (kubernetes-validate) or, for the
Prometheus Operator's kinds, its CRD models; the alert rules run their promtool unit tests;
the dashboard's queries are checked by promtool and against the metrics a worker exports.
"""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from dupwatch.settings import ENV_PREFIX, Settings
from dupwatch.pipeline import metrics

helm = pytest.importorskip(
    "helm_python", reason="helm-python-sdk (Helm's engine for Python) is not installed: "
                          "pip install -e '.[test]'")
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed: pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "dupwatch"
DASHBOARD = CHART / "dashboards" / "dupwatch.json"
RULES = CHART / "alerts" / "dupwatch.rules.yaml"
VALUES = {"default": None, "gpu": CHART / "ci" / "gpu-values.yaml",
          "kafka-security": CHART / "ci" / "kafka-security-values.yaml",
          "lookup": CHART / "ci" / "lookup-values.yaml"}
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest known.
KUBERNETES = ["1.25.0", kubernetes_validate.latest_version()]
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian's `prometheus` package; .ci/run "
                             "installs it when it runs as root)")


def values_of(variant: str) -> dict[str, Any]:
    path = VALUES[variant]
    return yaml.safe_load(path.read_text()) if path else {}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values)
        manifests = chart.render(values, name="dw", namespace="moderation")
    return [doc for path, text in sorted(manifests.items()) if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Manifests by kind; the dashboard's ConfigMap as "ConfigMap/dashboard"."""
    def name(doc: dict[str, Any]) -> str:
        dashboard = doc["metadata"]["name"].endswith("-dashboard")
        return doc["kind"] + ("/dashboard" if dashboard else "")
    return {name(doc): doc for doc in docs}


def pod_spec(kinds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return kinds["StatefulSet"]["spec"]["template"]["spec"]


def worker_env(kinds: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in pod_spec(kinds)["containers"][0]["env"]}


def validate_operator_kind(doc: dict[str, Any]) -> None:
    """ServiceMonitor and PrometheusRule against the Prometheus Operator's CRD models.

    The models ignore fields they do not know, so a round trip that loses one reveals a typo.
    """
    from cloudcoil.models.prometheus_operator import v1
    model = getattr(v1, doc["kind"]).model_validate(doc)
    assert model.model_dump(by_alias=True, exclude_unset=True, mode="json") == doc


@pytest.mark.parametrize("variant", VALUES)
def test_every_manifest_is_valid_kubernetes(variant: str) -> None:
    docs = render(values_of(variant))
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            validate_operator_kind(doc)
            continue
        for version in KUBERNETES:
            kubernetes_validate.validate(doc, version, strict=True)


def test_defaults_make_one_worker_with_a_volume_and_probes() -> None:
    kinds = by_kind(render({}))
    assert set(kinds) == {"StatefulSet", "Service", "ConfigMap", "ServiceAccount",
                          "PodDisruptionBudget"}
    workers = kinds["StatefulSet"]["spec"]
    container = workers["template"]["spec"]["containers"][0]
    assert workers["replicas"] == 1
    assert workers["volumeClaimTemplates"][0]["metadata"]["name"] == "state"
    assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["state"] == \
        kinds["ConfigMap"]["data"]["DUPWATCH_STATE_DIR"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    port = kinds["ConfigMap"]["data"]["DUPWATCH_WEB_PORT"]
    assert str(container["ports"][0]["containerPort"]) == port
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})


def test_gpu_values_ask_for_gpus_gpu_nodes_autoscaling_and_monitoring() -> None:
    kinds = by_kind(render(values_of("gpu")))
    pod = pod_spec(kinds)
    assert pod["containers"][0]["resources"]["limits"] == {"memory": "8Gi", "nvidia.com/gpu": 1}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true",
                                   "topology.kubernetes.io/zone": "zone-a"}
    gpu_taint = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    assert gpu_taint in pod["tolerations"]
    assert "replicas" not in kinds["StatefulSet"]["spec"]  # the autoscaler owns it
    assert kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "name": kinds["StatefulSet"]["metadata"]["name"]}
    service = kinds["Service"]["metadata"]["labels"]
    selector = kinds["ServiceMonitor"]["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service.items()
    scraped = kinds["ServiceMonitor"]["spec"]["endpoints"][0]["port"]
    assert scraped == kinds["Service"]["spec"]["ports"][0]["name"]
    assert kinds["ConfigMap"]["data"]["DUPWATCH_BATCH_SIZE"] == "32"
    assert kinds["ConfigMap"]["data"]["DUPWATCH_EMBEDDING_DEVICE"] == "cuda"
    assert kinds["ConfigMap"]["data"]["DUPWATCH_EMBEDDING_BACKEND"] == "torch"


def test_kafka_credentials_come_from_secrets_and_never_from_the_config_map() -> None:
    kinds = by_kind(render(values_of("kafka-security")))
    config = kinds["ConfigMap"]["data"]
    pod = pod_spec(kinds)
    assert worker_env(kinds)["DUPWATCH_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "kafka-credentials", "key": "password"}
    assert "Secret" not in kinds  # the user's own Secret is used, none is made
    assert not any("PASSWORD" in name for name in config)
    assert config["DUPWATCH_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert config["DUPWATCH_SASL_MECHANISM"] == "SCRAM-SHA-512"
    tls = {v["name"]: v for v in pod["volumes"]}["kafka-tls"]
    assert tls["secret"]["secretName"] == "kafka-client-tls"
    mount = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}["kafka-tls"]
    for setting, key in (("CAFILE", "ca.crt"), ("CERTFILE", "tls.crt"), ("KEYFILE", "tls.key")):
        assert config[f"DUPWATCH_SSL_{setting}"] == f"{mount}/{key}"
    assert {v["name"]: v for v in pod["volumes"]}["state"] == {"name": "state", "emptyDir": {}}


def test_a_password_in_values_goes_into_a_secret_the_chart_makes() -> None:
    kinds = by_kind(render({"kafka": {"securityProtocol": "SASL_PLAINTEXT",
                                      "sasl": {"username": "u", "password": "p4ss"}}}))
    assert kinds["Secret"]["data"] == {"sasl-password": "cDRzcw=="}
    secret = worker_env(kinds)["DUPWATCH_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert secret["name"] == kinds["Secret"]["metadata"]["name"]


def test_lookup_tokens_come_from_a_secret_file_and_a_policy_guards_the_port() -> None:
    docs = render(values_of("lookup"))
    kinds = by_kind(docs)
    config, pod = kinds["ConfigMap"]["data"], pod_spec(kinds)
    assert not any("TOKENS" in name for name in worker_env(kinds))  # never a plain variable
    assert {v["name"]: v for v in pod["volumes"]}["lookup-tokens"]["secret"] == {
        "secretName": "dupwatch-lookup-tokens"}
    mount = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert config["DUPWATCH_API_TOKENS_FILE"] == f"{mount['lookup-tokens']}/tokens"
    assert config["DUPWATCH_LOOKUP_QUEUE"] == "16"
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    lookup = services[kinds["StatefulSet"]["metadata"]["name"] + "-lookup"]["spec"]
    assert lookup["type"] == "ClusterIP" and lookup["ports"][0]["targetPort"] == "http"
    assert lookup["selector"] == kinds["StatefulSet"]["spec"]["selector"]["matchLabels"]
    policy = kinds["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"] == lookup["selector"]
    assert policy["ingress"][0]["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert len(policy["ingress"][0]["from"]) == 2
    closed = by_kind(render({"networkPolicy": {"enabled": True}}))["NetworkPolicy"]["spec"]
    assert closed["ingress"] == [] and closed["policyTypes"] == ["Ingress"]
    assert "DUPWATCH_API_TOKENS_FILE" not in by_kind(render({}))["ConfigMap"]["data"]


@pytest.mark.parametrize("variant", VALUES)
def test_every_variable_the_chart_sets_is_a_dupwatch_setting(variant: str) -> None:
    kinds = by_kind(render(values_of(variant)))
    known = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}
    assert set(kinds["ConfigMap"]["data"]) | set(worker_env(kinds)) <= known


@pytest.mark.parametrize("values, complaint", [
    ({"replicas": 2}, "replicas"),
    ({"kafka": {"securityProtocol": "TLS"}}, "securityProtocol"),
    ({"gpu": {"enabled": "yes"}}, "enabled"),
    ({"config": {"Batch-Size": 3}}, "Batch-Size"),
])
def test_the_values_schema_rejects_mistakes(values: dict[str, Any], complaint: str) -> None:
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmValuesError) as error:
        chart.validate_schema(values)
    assert complaint in str(error.value)


@pytest.mark.parametrize("variant", VALUES)
def test_the_chart_lints_without_warnings(variant: str) -> None:
    report = helm.lint(str(CHART), values_of(variant), strict=True, kube_version="v1.25.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def schema_leaves(schema: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for name, spec in schema.get("properties", {}).items():
        if "properties" in spec:
            yield from schema_leaves(spec, f"{prefix}{name}.")
        else:
            yield prefix + name


def values_leaves(values: dict[str, Any], schema: dict[str, Any],
                  prefix: str = "") -> Iterator[str]:
    for name, value in values.items():
        spec = schema["properties"][name]
        if "properties" in spec:
            yield from values_leaves(value, spec, f"{prefix}{name}.")
        else:
            yield prefix + name


def test_values_yaml_the_schema_and_the_readme_list_the_same_values() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    section = (CHART / "README.md").read_text().split("\n## Values\n")[1].split("\n## ")[0]
    documented = re.findall(r"^\| `([a-zA-Z.]+)` \|", section, flags=re.M)
    in_schema = list(schema_leaves(schema))
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert list(values_leaves(values, schema)) == in_schema
    assert documented == in_schema  # every value, in values.yaml's order


def exported_series() -> set[str]:
    """Every series name a worker's /metrics can carry."""
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}
    families = text_string_to_metric_families(metrics.exposition()[0].decode())
    return {f.name + suffix for f in families if f.name.startswith("dupwatch_")
            for suffix in suffixes[f.type]}


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


def test_the_dashboard_and_the_alerts_only_use_metrics_workers_export() -> None:
    exported = exported_series()
    used = set(re.findall(r"\bdupwatch_[a-z_]+", " ".join(dashboard_queries()) + RULES.read_text()))
    assert used and used <= exported, used - exported
    # and each of the views is on the dashboard
    titles = " ".join(p["title"].lower() for p in json.loads(DASHBOARD.read_text())["panels"])
    for view in ("events in", "verdict mix", "stage latency", "lag", "dead letters", "index size"):
        assert view in titles, view


def test_the_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            source = {"type": "prometheus", "uid": "${datasource}"}
            assert panel["datasource"] == source, panel["title"]
            assert panel["targets"], panel["title"]
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "job"}


def test_the_chart_ships_the_dashboard_and_the_rules_unchanged() -> None:
    kinds = by_kind(render(values_of("gpu")))
    shipped = kinds["ConfigMap/dashboard"]
    assert json.loads(shipped["data"]["dupwatch.json"]) == json.loads(DASHBOARD.read_text())
    assert shipped["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert kinds["PrometheusRule"]["spec"] == yaml.safe_load(RULES.read_text())


@needs_promtool
def test_the_alert_rules_pass_their_promtool_unit_tests() -> None:
    subprocess.run([PROMTOOL, "check", "rules", str(RULES)], check=True, capture_output=True)
    result = subprocess.run([PROMTOOL, "test", "rules", "dupwatch.rules.test.yaml"],
                            cwd=ROOT / "tests" / "deploy" / "alerts", capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_the_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool checks PromQL inside rule files, so each query becomes a recording rule, with
    # Grafana's variables given example values.
    grafana = {"$__rate_interval": "5m", "$job": ".*"}
    rules = [{"record": f"dashboard:query_{n}",
              "expr": re.sub(r"\$__rate_interval|\$job", lambda m: grafana[m.group(0)], expr)}
             for n, expr in enumerate(dashboard_queries())]
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
