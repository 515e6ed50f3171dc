"""docker-compose.yml cannot run here (no Docker engine); check that its parts are wired together."""

import yaml

from tests.conftest import REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_has_broker_service_and_prometheus():
    assert {"kafka", "tdm-alerts", "prometheus"} <= set(SERVICES)


def test_service_talks_to_the_broker_it_advertises():
    advertised = SERVICES["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    bootstrap = SERVICES["tdm-alerts"]["environment"]["TDM_BOOTSTRAP_SERVERS"]
    assert f"//{bootstrap}" in advertised
    assert SERVICES["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_broker_image_matches_the_local_broker_version():
    local = (REPO / "ops" / "kafka" / "local-broker").read_text()
    version = SERVICES["kafka"]["image"].split(":")[1]
    assert f'KAFKA_VERSION = "{version}"' in local


def test_prometheus_scrapes_the_service_metrics_port():
    mount = next(v for v in SERVICES["prometheus"]["volumes"] if "prometheus.yml" in v)
    config = yaml.safe_load((REPO / mount.split(":")[0]).read_text())
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    port = SERVICES["tdm-alerts"]["environment"]["TDM_METRICS_PORT"]
    assert f"tdm-alerts:{port}" in targets


def test_service_is_built_from_the_dockerfile_and_runs_the_cli():
    assert SERVICES["tdm-alerts"]["build"] == "."
    dockerfile = (REPO / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["tdm-alerts"]' in dockerfile


def test_long_running_services_come_back_after_a_crash_or_a_reboot():
    services = COMPOSE["services"]
    for name, service in services.items():
        expected = "on-failure" if name == "create-topics" else "unless-stopped"
        assert service.get("restart") == expected, name


def test_the_notifier_is_its_own_service_scraped_as_its_job_with_secrets_as_files():
    notify = SERVICES["tdm-alerts-notify"]
    assert notify["command"] == ["notify"] and notify["build"] == "."
    env = notify["environment"]
    mount = next(v for v in SERVICES["prometheus"]["volumes"] if "prometheus.yml" in v)
    config = yaml.safe_load((REPO / mount.split(":")[0]).read_text())
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert jobs["tdm-alerts-notify"] == [f"tdm-alerts-notify:{env['TDM_METRICS_PORT']}"]
    # Its receivers are the stack's own services; the signing secret is a mounted file.
    assert env["TDM_NOTIFY_ALERTMANAGER_URL"].startswith("http://alertmanager:")
    assert env["TDM_NOTIFY_WEBHOOK_URL"].startswith("http://alert-webhook:")
    [secret] = notify["secrets"]
    assert env["TDM_NOTIFY_WEBHOOK_SECRET_FILE"] == f"/run/secrets/{secret}"
    assert (REPO / COMPOSE["secrets"][secret]["file"]).read_text().strip()
    assert not any("SECRET" in k and not k.endswith("_FILE") for k in env)
    topics = SERVICES["create-topics"]["command"][0]
    assert env["TDM_NOTIFY_DLQ_TOPIC"] + ":" in topics
