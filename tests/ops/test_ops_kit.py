"""The operations kit is consistent: compose wiring, Alertmanager, Grafana, Kubernetes manifests.

None of it can run here (no Docker engine, no cluster), so these tests check what can be
checked: the real tools validate the configs, and every cross-reference points at something
that exists (ports, paths, metric names, topic and group names).
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import uuid

import pytest
import yaml

from consumer.metrics import Metrics
from consumer.notify.metrics import NotifyMetrics
from consumer.settings import Settings
from tests.conftest import REPO

OPS = REPO / "ops"
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
DASHBOARD = json.loads((OPS / "grafana/dashboards/tdm-alerts.json").read_text())
# The lab-result service's manifests, by kind (the notifier's, notify-*.yaml, are checked in
# tests/ops/test_k8s_manifests.py).
APART = ("notify-", "ack-server-", "cds-hooks-")
K8S = {
    doc["kind"]: doc
    for path in sorted((OPS / "k8s").glob("*.yaml"))
    # The service's own manifests: the notifier's, the acknowledgement server's and the CDS Hooks
    # service's are apart.
    if path.name != "kustomization.yaml"
    and not path.name.startswith(("notify-", "ack-server-", "cds-hooks-"))
    for doc in yaml.safe_load_all(path.read_text())
}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: `make test` installs Debian's prometheus packages", pytrace=False)
    return path


def exposed_metric_names() -> set[str]:
    """Every series name the service exposes, with histogram and counter suffixes."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "info": ["_info"]}
    names = set()
    families = [*Metrics().registry.collect(), *NotifyMetrics().registry.collect()]
    for family in families:  # the service's and the notifier's
        names.add(family.name)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, []))
    return names


def dashboard_queries() -> list[str]:
    return [target["expr"] for panel in DASHBOARD["panels"] for target in panel["targets"]]


def test_prometheus_config_is_valid_with_its_rules():
    done = subprocess.run(
        [tool("promtool"), "check", "config", "prometheus.yml"],
        cwd=OPS / "prometheus",
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_alertmanager_config_is_valid():
    done = subprocess.run(
        [tool("amtool"), "check-config", str(OPS / "alertmanager/alertmanager.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("severity", "receiver"), [("critical", "pager"), ("warning", "tickets")], ids=["page", "ticket"]
)
def test_alertmanager_pages_critical_and_tickets_warnings(severity, receiver):
    done = subprocess.run(
        [
            tool("amtool"),
            "config",
            "routes",
            "test",
            f"--config.file={OPS / 'alertmanager/alertmanager.yml'}",
            f"severity={severity}",
            "alertname=TdmAlertsDown",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.stdout.split() == [receiver], done.stdout + done.stderr


def test_every_rule_severity_has_a_route():
    """A new severity would fall through to tickets unnoticed: every one used is routed on purpose."""
    rules = yaml.safe_load((OPS / "prometheus/alerts.yml").read_text())
    severities = {r["labels"]["severity"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert severities == {"critical", "warning"}


def test_compose_prometheus_has_its_rules_and_alertmanager():
    config = yaml.safe_load((OPS / "prometheus/prometheus.yml").read_text())
    mounts = dict(v.split(":")[:2] for v in COMPOSE["prometheus"]["volumes"])
    for rule_file in config["rule_files"]:
        assert f"./ops/prometheus/{rule_file}" in mounts
        assert mounts[f"./ops/prometheus/{rule_file}"] == f"/etc/prometheus/{rule_file}"
    [target] = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in COMPOSE and f"{port}:{port}" in COMPOSE[host]["ports"]


def test_alertmanager_routes_to_the_webhook_service():
    config = yaml.safe_load((OPS / "alertmanager/alertmanager.yml").read_text())
    urls = [w["url"] for r in config["receivers"] for w in r.get("webhook_configs", [])]
    assert len(urls) == len(config["receivers"]) == 2  # the pager and the ticket queue
    for url in urls:
        host, port = re.match(r"http://([^:/]+):(\d+)/", url).groups()
        assert host in COMPOSE and COMPOSE[host]["environment"]["HTTP_PORT"] == port
    mount = next(v for v in COMPOSE["alertmanager"]["volumes"] if "alertmanager.yml" in v)
    assert mount.startswith("./ops/alertmanager/alertmanager.yml:")


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus():
    mounts = dict(v.split(":")[:2] for v in COMPOSE["grafana"]["volumes"])
    provider = yaml.safe_load((OPS / "grafana/provisioning/dashboards/tdm-alerts.yml").read_text())
    assert mounts["./ops/grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    assert mounts["./ops/grafana/provisioning"] == "/etc/grafana/provisioning"
    source = yaml.safe_load((OPS / "grafana/provisioning/datasources/prometheus.yml").read_text())
    [prometheus] = source["datasources"]
    assert prometheus["url"] == "http://prometheus:9090" and "9090:9090" in COMPOSE["prometheus"]["ports"]
    # Every query goes through the datasource variable, whose default is the provisioned source.
    assert {t["datasource"]["uid"] for p in DASHBOARD["panels"] for t in p["targets"]} == {"${datasource}"}
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["current"]["value"] == prometheus["uid"]


def test_dashboard_filters_by_instance_and_shows_what_operators_asked_for():
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["instance"]["includeAll"] and variables["instance"]["multi"]
    assert variables["instance"]["query"]["query"] == "label_values(tdm_build_info, instance)"
    for query in dashboard_queries():
        for selector in re.findall(r"\btdm_[a-z_]+(\{[^}]*\})?", query):
            assert 'instance=~"$instance"' in selector, query
    titles = {p["title"]: p for p in DASHBOARD["panels"]}
    assert "up{" in titles["Instances up (scraped)"]["targets"][0]["expr"]
    assert "ALERTS{" in titles["Service alerts firing"]["targets"][0]["expr"]
    assert "tdm_ready" in titles["Readiness by instance"]["targets"][0]["expr"]
    assert "by (analyte, finding)" in titles["Interpretations by finding"]["targets"][0]["expr"]
    assert "tdm_ruleset_info" in titles["Rule-set version"]["targets"][0]["expr"]


def test_dashboard_covers_the_issue_and_uses_only_real_metrics():
    queries = dashboard_queries()
    known = exposed_metric_names()
    for query in queries:
        for name in set(re.findall(r"\b(tdm_[a-z_]+)", query)):
            assert name in known, f"{name} in {query!r} is not a metric the service exposes"
    text = " ".join(queries)
    for needed in (
        "tdm_messages_consumed_total",
        "tdm_alerts_published_total",
        "tdm_consumer_lag_messages",
        "tdm_dead_letters_total",
        "tdm_end_to_end_seconds_bucket",
        "tdm_ready",
        "tdm_notify_deliveries_total",
        "tdm_notify_delivery_seconds_bucket",
        "tdm_notify_open_incidents",
        "tdm_notify_oldest_undelivered_seconds",
    ):
        assert needed in text


def test_k8s_probes_and_port_match_the_service():
    pods = K8S["StatefulSet"]["spec"]["template"]["spec"]
    [container] = pods["containers"]
    env = {e["name"]: e for e in container["env"]}
    port = next(p for p in container["ports"] if p["name"] == "metrics")["containerPort"]
    assert env["TDM_METRICS_PORT"]["value"] == str(port)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pods["terminationGracePeriodSeconds"] >= 30
    assert container["resources"]["limits"]["memory"] and container["resources"]["requests"]["cpu"]
    assert K8S["Service"]["spec"]["ports"][0]["targetPort"] == "metrics"
    assert K8S["PodMonitor"]["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


def test_k8s_replacement_pods_keep_their_transactional_id():
    """A StatefulSet pod's name is stable, and it is the instance id: a replacement fences its
    predecessor's open transaction instead of leaving readers to wait for its time-out."""
    statefulset = K8S["StatefulSet"]
    [container] = statefulset["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["TDM_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert K8S["Service"]["spec"]["clusterIP"] == "None"
    assert statefulset["spec"]["serviceName"] == K8S["Service"]["metadata"]["name"]
    assert "Deployment" not in K8S


def test_k8s_availability_and_hardening():
    statefulset = K8S["StatefulSet"]["spec"]
    pods = statefulset["template"]["spec"]
    assert "replicas" not in statefulset  # KEDA owns the count: a fixed one would fight it
    assert K8S["ScaledObject"]["spec"]["minReplicaCount"] >= 2
    assert K8S["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    labels = statefulset["template"]["metadata"]["labels"]
    assert K8S["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [on_nodes, _] = pods["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert on_nodes["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    security = pods["securityContext"]
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert isinstance(security["runAsUser"], int) and isinstance(security["runAsGroup"], int)
    dockerfile = (REPO / "Dockerfile").read_text()
    assert f"USER {security['runAsUser']}" in dockerfile  # the image's user, by number
    [container] = pods["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_k8s_kafka_secrets_are_required_files_shared_with_keda():
    config = K8S["ConfigMap"]["data"]
    pods = K8S["StatefulSet"]["spec"]["template"]["spec"]
    [container] = pods["containers"]
    assert not any("SASL_PASSWORD" in e["name"] and "_FILE" not in e["name"] for e in container["env"])
    assert not any("secretRef" in source for source in container["envFrom"])  # no secrets in the env
    [volume] = [v for v in pods["volumes"] if "secret" in v]
    assert "optional" not in volume["secret"]  # required: a pod without credentials does not start
    [mount] = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    for setting in ("TDM_SASL_PASSWORD_FILE", "TDM_SSL_CAFILE"):
        assert config[setting].startswith(mount["mountPath"] + "/")
    auth = K8S["TriggerAuthentication"]["spec"]
    secret_keys = {ref["parameter"]: ref["key"] for ref in auth["secretTargetRef"]}
    assert secret_keys == {
        "password": config["TDM_SASL_PASSWORD_FILE"].rsplit("/", 1)[1],
        "ca": config["TDM_SSL_CAFILE"].rsplit("/", 1)[1],
    }
    assert all(ref["name"] == volume["secret"]["secretName"] for ref in auth["secretTargetRef"])
    [username] = auth["configMapTargetRef"]
    assert (username["name"], username["key"]) == (K8S["ConfigMap"]["metadata"]["name"], "TDM_SASL_USERNAME")
    [trigger] = K8S["ScaledObject"]["spec"]["triggers"]
    assert trigger["authenticationRef"]["name"] == K8S["TriggerAuthentication"]["metadata"]["name"]
    assert trigger["metadata"]["sasl"] == config["TDM_SASL_MECHANISM"].lower().replace("-sha-", "_sha")
    assert (trigger["metadata"]["tls"] == "enable") == config["TDM_SECURITY_PROTOCOL"].endswith("SSL")


def test_k8s_config_is_valid_settings_and_keda_watches_the_same_group_and_topic(tmp_path):
    config = K8S["ConfigMap"]["data"]
    values = {k.removeprefix("TDM_").lower(): v for k, v in config.items()}
    (tmp_path / "sasl-password").write_text("mounted from the Secret\n")
    values["sasl_password_file"] = str(tmp_path / "sasl-password")  # the pod's mount, here
    settings = Settings(**values)
    keda = K8S["ScaledObject"]["spec"]
    [trigger] = keda["triggers"]
    assert trigger["type"] == "kafka"
    # One place for the broker list, group and topic: KEDA reads the pods' own variables.
    env_from = {"bootstrapServersFromEnv", "consumerGroupFromEnv", "topicFromEnv"}
    assert env_from <= trigger["metadata"].keys()
    assert not {"bootstrapServers", "consumerGroup", "topic"} & trigger["metadata"].keys()
    assert all(trigger["metadata"][k] in config for k in env_from)
    assert len(settings.input_topics) == 1
    target = keda["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("StatefulSet", K8S["StatefulSet"]["metadata"]["name"])
    labels = K8S["StatefulSet"]["spec"]["template"]["metadata"]["labels"]
    assert K8S["PodMonitor"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    kustomized = yaml.safe_load((OPS / "k8s/kustomization.yaml").read_text())["resources"]
    assert sorted(kustomized) == sorted(
        p.name for p in (OPS / "k8s").glob("*.yaml") if p.name != "kustomization.yaml"
    )


def test_the_local_brokers_cluster_id_never_reads_as_an_option(monkeypatch):
    # About 1 random id in 64 began with "-" and the storage tool refused it (issue 27).
    from importlib.machinery import SourceFileLoader
    from importlib.util import module_from_spec, spec_from_loader

    loader = SourceFileLoader("local_broker", str(REPO / "ops" / "kafka" / "local-broker"))
    spec = spec_from_loader("local_broker", loader)
    assert spec is not None
    module = module_from_spec(spec)
    loader.exec_module(module)
    bad, good = uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x10" + bytes(15))
    assert base64.urlsafe_b64encode(bad.bytes).startswith(b"-")  # the draw that broke start-up
    draws = iter([bad, good])
    monkeypatch.setattr(module.uuid, "uuid4", lambda: next(draws))
    assert module.new_cluster_id() == base64.urlsafe_b64encode(good.bytes).decode().rstrip("=")
