"""compose.yaml, the Dockerfile and .dockerignore: the production-shaped deployment, checked
without Docker (the files are parsed; the settings and CLI code they name is the real one)."""

from __future__ import annotations

import dataclasses
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from devices.ca import CertificateAuthority
from healthiot import settings
from healthiot.cli import _dispatch, _parser
from storage import roles

ROOT = Path(__file__).resolve().parents[2]
RUN_SECRETS = "/run/secrets/"
BRIDGES = ("bridge-1", "bridge-2")
APP_SERVICES = ("migrate", *BRIDGES, "api", "record-feed", "maintenance", "renewer")
# What each command reads (healthiot/daemons.py) from files: settings fields, by name.
READS = {
    # The superuser's password, and the service role's, which it sets.
    "migrate": {"database_admin_password", "database_password"},
    **{name: {"database_password", "kek_file", "mqtt_ca_file", "mqtt_cert_file",
              "mqtt_key_file"} for name in BRIDGES},
    # The record's client secret: patients link their record through the API.
    "api": {"database_password", "kek_file", "audit_key_file", "jwt_key_file",
            "api_cert_file", "api_key_file", "record_client_secret"},
    "record-feed": {"database_password", "kek_file", "audit_key_file", "record_client_secret"},
    "maintenance": {"database_password", "kek_file"},
    # Its certificate, key and the device CA are command-line files (tested apart below).
    "renewer": {"database_password", "mqtt_ca_file"},
}
BROKER_CERT_FILES = ("clients-ca.pem", "broker.pem", "broker.key")  # healthiot/cli.py


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


def secret_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Path inside the container -> name of the compose secret mounted there."""
    mounts = {}
    for entry in service.get("secrets") or []:
        if isinstance(entry, str):
            entry = {"source": entry}
        target = entry.get("target", entry["source"])
        mounts[target if target.startswith("/") else RUN_SECRETS + target] = entry["source"]
    return mounts


def container_ports(service: dict[str, Any]) -> set[int]:
    """Container ports a service publishes or exposes, whatever the syntax."""
    ports = set()
    for entry in (service.get("ports") or []) + (service.get("expose") or []):
        if isinstance(entry, dict):
            ports.add(int(entry["target"]))
        else:
            ports.add(int(str(entry).split("/")[0].rsplit(":", 1)[-1]))
    return ports


def healthcheck_text(service: dict[str, Any]) -> str:
    test = service.get("healthcheck", {}).get("test", [])
    return test if isinstance(test, str) else " ".join(test)


def file_variable(field_name: str) -> str:
    """The variable naming the file a setting is read from (``_FILE`` for a text secret)."""
    field = next(f for f in dataclasses.fields(settings.Settings) if f.name == field_name)
    name = settings.env_name(field_name)
    return name + "_FILE" if field.type == "str" else name


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ${NAME}, ${NAME:?error} and ${NAME:-default}, as far as this file uses them."""
    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2) or "", match.group(3) or ""
        if variables.get(name):
            return variables[name]
        if op.endswith("?"):
            raise AssertionError(f"${{{name}}} is required: {arg}")
        return arg
    return re.sub(r"\$\{(\w+)(:?[?-])?([^}]*)\}", one, value)


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def test_compose_defines_the_database_broker_bridge_api_and_one_shot_services(services):
    assert {"db", "mosquitto", "broker-config", "migrate", *BRIDGES, "api"} <= services.keys()


def test_every_healthiot_variable_is_one_the_settings_accept(services):
    accepted = settings.accepted_variables()
    unknown = sorted(f"{name}: {variable}" for name, service in services.items()
                     for variable in environment(service)
                     if variable.startswith(settings.PREFIX) and variable not in accepted)
    assert not unknown, f"settings would refuse these unknown variables: {unknown}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_run_in_production(services, name):
    assert environment(services[name]).get("HEALTHIOT_ENVIRONMENT") == "production"


@pytest.mark.parametrize(("name", "expected"), [
    ("migrate", ["db", "migrate"]), ("bridge-1", ["bridge"]), ("bridge-2", ["bridge"]),
    ("api", ["api"]), ("record-feed", ["record-feed"]), ("maintenance", ["maintenance"]),
    ("broker-config", ["broker-config"]), ("renewer", ["devices", "renewer"]),
])
def test_app_services_run_a_healthiot_command_of_the_image_built_here(services, name, expected):
    service = services[name]
    build = service.get("build")
    assert (build.get("context") if isinstance(build, dict) else build) == "."
    assert command(service)[:len(expected)] == expected
    _parser().parse_args(command(service))  # exits (SystemExit) on an unknown command/flag


@pytest.mark.parametrize("name", APP_SERVICES)
def test_production_settings_load_from_the_service_environment(services, name, tmp_path):
    secret_text = {"postgres-service-password": "s3cret-from-file"}
    env = {}
    for variable, value in environment(services[name]).items():
        value = interpolate(value, {"API_PUBLIC_URL": "https://api.example.test"})
        if value.startswith(RUN_SECRETS):
            secret = value.removeprefix(RUN_SECRETS)
            path = tmp_path / secret
            path.write_text(secret_text.get(secret, f"contents of {secret}\n"))
            value = str(path)
        env[variable] = value

    loaded = settings.load(env)

    assert loaded.environment == "production"
    assert loaded.log_format == "json"
    assert loaded.database_password == "s3cret-from-file"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_each_app_service_mounts_exactly_the_secrets_it_reads(services, name):
    service = services[name]
    env = environment(service)
    missing_variables = sorted(file_variable(f) for f in READS[name]
                               if file_variable(f) not in env)
    assert not missing_variables, f"{name} does not set {missing_variables}"
    needed = {env[file_variable(f)] for f in READS[name]}
    needed |= set(re.findall(r"/run/secrets/[\w.-]+", healthcheck_text(service)))
    files_named = {arg for arg in command(service) if arg.startswith(RUN_SECRETS)}
    needed |= files_named
    # A directory on the command line counts as mounted by the files mounted inside it
    # (which files: test_the_renewer_loads_the_operator_device_ca_from_its_mounts).
    mounted = {next((d for d in files_named if path.startswith(d + "/")), path)
               for path in secret_mounts(service)}
    assert mounted == needed, (f"{name}: not mounted {sorted(needed - mounted)}, "
                               f"mounted without use {sorted(mounted - needed)}")


def test_secret_settings_name_run_secrets_files_never_values(services):
    fields = [f for f in dataclasses.fields(settings.Settings) if f.metadata.get("secret")]
    inline = {settings.env_name(f.name) for f in fields if f.type == "str"}
    # Secret directories (owner keys) are volumes of their own, not Docker secrets.
    as_files = {file_variable(f.name) for f in fields if not f.name.endswith("_dir")}
    problems = []
    for name, service in services.items():
        for variable, value in environment(service).items():
            if variable in inline or ("PASSWORD" in variable and not variable.endswith("_FILE")):
                problems.append(f"{name}: {variable} carries a secret inline")
            if variable in as_files and not value.startswith(RUN_SECRETS):
                problems.append(f"{name}: {variable}={value} is not a /run/secrets file")
    assert not problems, problems


def test_every_secret_is_a_file_the_operator_provides(compose):
    secrets = compose.get("secrets") or {}
    assert secrets
    not_files = {name: spec for name, spec in secrets.items()
                 if set(spec) != {"file"} or not str(spec["file"]).startswith("./secrets/")
                 or "$" in str(spec["file"])}
    assert not not_files, f"secrets not read from ./secrets files: {not_files}"


def test_only_migrate_holds_the_database_superuser_password(services):
    db_env = environment(services["db"])
    assert "POSTGRES_PASSWORD" not in db_env
    superuser = secret_mounts(services["db"]).get(db_env["POSTGRES_PASSWORD_FILE"])
    assert superuser is not None
    holders = {name for name, service in services.items()
               if superuser in secret_mounts(service).values()}
    assert holders == {"db", "migrate"}
    migrate_env = environment(services["migrate"])
    assert secret_mounts(services["migrate"])[
        migrate_env["HEALTHIOT_DATABASE_ADMIN_PASSWORD_FILE"]] == superuser


def test_migrate_connects_as_the_superuser_the_services_as_the_service_role(services):
    db_env = environment(services["db"])
    admin_url = environment(services["migrate"])["HEALTHIOT_DATABASE_ADMIN_URL"]
    assert admin_url == (f"postgresql://{db_env['POSTGRES_USER']}@db:5432/"
                         f"{db_env['POSTGRES_DB']}")
    assert db_env["POSTGRES_USER"] not in (roles.OWNER, roles.SERVICE)


@pytest.mark.parametrize("name", APP_SERVICES)
def test_the_database_url_names_the_db_service_the_service_role_and_database(services, name):
    db_env = environment(services["db"])
    url = environment(services[name])["HEALTHIOT_DATABASE_URL"]
    match = re.fullmatch(r"postgresql://([^:@/]+)@db(?::5432)?/(\w+)", url)
    assert match, f"{url} is not postgresql://user@db:5432/name (no password in the URL)"
    assert match.groups() == (roles.SERVICE, db_env["POSTGRES_DB"])


def test_services_that_write_or_cut_the_audit_log_share_one_anchor_volume(services):
    wanted = {"api", "record-feed", "maintenance"}
    mounts = {}
    for name in wanted:
        env = environment(services[name])
        directory = env["HEALTHIOT_AUDIT_ANCHOR_DIR"]
        volume = next((str(v).split(":")[0] for v in services[name].get("volumes", [])
                       if str(v).split(":")[1] == directory), None)
        assert volume, f"{name} does not mount {directory}"
        mounts[name] = volume
    assert len(set(mounts.values())) == 1
    anchors = next(iter(mounts.values()))
    # Outside the database: the db container never sees the anchors.
    assert not any(str(v).startswith(anchors + ":") for v in services["db"].get("volumes", []))


def test_the_audit_key_is_mounted_only_where_entries_are_written(services):
    holders = {name for name, service in services.items()
               if "audit-key" in secret_mounts(service).values()}
    assert holders == {"api", "record-feed"}


def test_the_database_is_not_reachable_from_outside(compose, services):
    db = services["db"]
    assert not container_ports(db)
    networks = db.get("networks") or ["default"]
    assert all((compose.get("networks") or {}).get(n, {}).get("internal") for n in networks)


def test_two_bridge_workers_share_one_config_under_distinct_stable_client_ids(services):
    first, second = (services[name] for name in BRIDGES)
    ids = [environment(b).get("HEALTHIOT_BRIDGE_CLIENT_ID") for b in (first, second)]
    # A fixed id per worker: a re-created worker resumes its persistent session instead of
    # leaving an orphan one in the shared group; two workers with one id would steal it.
    assert all(ids) and ids[0] != ids[1], ids
    assert all(i.startswith("svc-bridge") for i in ids)  # the name the broker ACL grants
    for key in ("command", "secrets", "depends_on", "networks"):
        assert first.get(key) == second.get(key), key
    assert environment(first).keys() == environment(second).keys()
    assert "replicas" not in (first.get("deploy") or {})  # replicas would share the id


def test_no_service_publishes_or_exposes_the_plaintext_mqtt_port(services):
    offenders = [name for name, service in services.items() if 1883 in container_ports(service)]
    assert not offenders


def test_broker_config_writes_two_mtls_listeners_and_only_the_devices_one_is_published(
        services, tmp_path):
    args = _parser().parse_args(command(services["broker-config"]))
    published = container_ports(services["mosquitto"])
    args.out = tmp_path  # the same command, writing here instead of into the volume

    assert _dispatch(args, settings.Settings()) == 0

    conf = (tmp_path / "mosquitto.conf").read_text()
    listeners = re.findall(r"^listener .*$", conf, flags=re.MULTILINE)
    assert listeners == [f"listener {args.port} {args.bind}",
                         f"listener {args.services_port} {args.bind}"]
    assert conf.count("require_certificate true") == 2
    assert published == {args.port}  # the services' listener stays on the compose network
    assert f"cafile {args.certs / 'clients-ca.pem'}" in conf
    # The devices' listener binds client ids to certificates; the policy is the plugin the
    # broker image carries, not an acl_file (which lets any subscription through).
    devices_block = conf.split(listeners[1])[0]
    assert "use_username_as_clientid true" in devices_block
    assert f"plugin {args.plugin}" in conf and "acl_file" not in conf


def test_the_broker_image_carries_the_plugin_the_config_names(services):
    args = _parser().parse_args(command(services["broker-config"]))
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert services["mosquitto"]["build"]["target"] == "broker"
    assert f"COPY --from=plugin /healthiot_acl.so {args.plugin}" in dockerfile


def test_mosquitto_runs_the_generated_config_with_the_operator_certificates(services):
    generator, broker = services["broker-config"], services["mosquitto"]
    args = _parser().parse_args(command(generator))
    out = str(args.out)

    def volume_at(service: dict[str, Any], path: str) -> str | None:
        for volume in service.get("volumes") or []:
            source, _, target = str(volume).partition(":")
            if target.split(":")[0] == path:
                return source
        return None

    assert depends_on(broker)["broker-config"] == "service_completed_successfully"
    assert volume_at(generator, out) is not None
    assert volume_at(generator, out) == volume_at(broker, out)
    assert command(broker)[-2:] == ["-c", f"{out}/mosquitto.conf"]
    mounted = secret_mounts(broker)
    missing = [f for f in BROKER_CERT_FILES if str(args.certs / f) not in mounted]
    assert not missing, f"mosquitto lacks {missing} under {args.certs}"


@pytest.mark.parametrize("name", BRIDGES)
def test_the_bridge_connects_to_the_mosquitto_service_on_its_listener(services, name):
    env = environment(services[name])
    args = _parser().parse_args(command(services["broker-config"]))
    assert env["HEALTHIOT_MQTT_HOST"] == "mosquitto"
    assert int(env.get("HEALTHIOT_MQTT_SERVICES_PORT",
                       settings.Settings.mqtt_services_port)) == args.services_port


@pytest.mark.parametrize(("name", "needs"), [
    ("migrate", {"db": "service_healthy"}),
    *((b, {"migrate": "service_completed_successfully", "mosquitto": "service_healthy"})
      for b in BRIDGES),
    ("api", {"migrate": "service_completed_successfully"}),
    ("renewer", {"migrate": "service_completed_successfully", "mosquitto": "service_healthy"}),
])
def test_services_start_only_after_what_they_need_is_ready(services, name, needs):
    assert needs.items() <= depends_on(services[name]).items()


@pytest.mark.parametrize("name", ["db", "mosquitto", "api", "bridge-1", "bridge-2"])
def test_long_running_services_have_a_healthcheck(services, name):
    assert healthcheck_text(services[name])


def test_db_healthcheck_asks_pg_isready(services):
    assert "pg_isready" in healthcheck_text(services["db"])


def test_api_serves_https_on_8443_and_checks_its_own_healthz(services):
    api = services["api"]
    env = environment(api)
    assert env["HEALTHIOT_API_HOST"] == "0.0.0.0"  # noqa: S104 (inside a container)
    assert int(env.get("HEALTHIOT_API_PORT", settings.Settings.api_port)) == 8443
    assert container_ports(api) == {8443, 9110}  # HTTPS, and /metrics (exposed only)
    test = api["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    code = test[3]
    compile(code, "api healthcheck", "exec")  # a syntax error would mean forever unhealthy
    assert "https://localhost:8443/healthz" in code
    assert "cafile=" in code


def test_third_party_images_are_pinned_to_a_version(services):
    unpinned = []
    for name, service in services.items():
        image = service.get("image")
        if image is None or "build" in service:
            continue
        tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else ""
        if "@sha256:" not in image and not re.match(r"\d+\.\d+", tag):
            unpinned.append(f"{name}: {image}")
    assert not unpinned


def test_the_image_runs_healthiot_as_a_non_root_user():
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    last_from = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    final_stage = lines[last_from:]
    assert final_stage[0].startswith("FROM python:3.11-slim")
    users = [line.split()[1] for line in final_stage if line.startswith("USER ")]
    assert users, "the final stage sets no USER: it would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert 'ENTRYPOINT ["healthiot"]' in final_stage


def test_the_build_context_admits_the_sources_and_nothing_else():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    admitted = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]
                ["include"]}
    assert patterns[0] == "*", "the context must start from nothing (deny everything)"
    assert {"pyproject.toml", *packages} <= admitted
    assert not admitted & {"secrets", "var", ".venv", ".git", "tests"}


def test_every_service_that_opens_data_keys_mounts_the_owner_keys(services):
    for name in ("bridge-1", "bridge-2", "api", "record-feed", "maintenance"):
        assert "owner-keys:/var/lib/healthiot/owner-keys" in services[name].get("volumes", [])


def test_the_renewer_loads_the_operator_device_ca_from_its_mounts(compose, services, tmp_path):
    """The files `healthiot ca init` wrote, laid out as compose mounts them, are the CA the
    renewer loads: nothing missing (it would make a new CA, which signs for no broker) and
    no root key in the container."""
    operator = tmp_path / "operator"
    made = CertificateAuthority.load_or_create(operator / "secrets" / "device-ca")
    renewer = services["renewer"]
    args = _parser().parse_args(command(renewer))
    container = tmp_path / "container"
    for target, source in secret_mounts(renewer).items():
        path = container / target.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        origin = operator / compose["secrets"][source]["file"]
        path.write_bytes(origin.read_bytes() if origin.exists() else b"")
    pki = container / str(args.pki).lstrip("/")
    before = sorted(p.name for p in pki.iterdir())

    loaded = CertificateAuthority.load_or_create(pki)

    assert sorted(p.name for p in pki.iterdir()) == before  # loaded, not created
    assert "root.key" not in before
    assert (loaded.root, loaded.device_ca) == (made.root, made.device_ca)
    assert loaded.root_key is None
    assert {str(args.cert), str(args.key)} <= secret_mounts(renewer).keys()


RECORD_VARIABLES = {"RECORD_FEED_URL": "https://record.example.test/fhir",
                    "RECORD_FEED_SENDER_OID": "1.2.250.1.999.1",
                    "RECORD_ISSUER": "https://auth.record.example.test",
                    "RECORD_CLIENT_ID": "healthiot-client",
                    "RECORD_REDIRECT_URI": "https://api.example.test/v1/record-link/callback",
                    "API_PUBLIC_URL": "https://api.example.test"}


def _service_settings(services: dict[str, Any], name: str, variables: dict[str, str],
                      tmp_path: Path, client_secret: str) -> settings.Settings:
    env = {}
    for variable, value in environment(services[name]).items():
        value = interpolate(value, variables)
        if value.startswith(RUN_SECRETS):
            path = tmp_path / value.removeprefix(RUN_SECRETS)
            secret = value.removeprefix(RUN_SECRETS)
            path.write_text(client_secret if secret == "record-client-secret"
                            else f"contents of {secret}\n")
            value = str(path)
        env[variable] = value
    return settings.load(env)


@pytest.mark.parametrize("name", ["api", "record-feed"])
def test_the_record_feed_settings_come_from_the_operator_not_from_defaults(
        services, name, tmp_path):
    """Issue 20: with the operator's record variables and secret file, the API (where
    patients link their record) and the feed load every setting the feed needs; the client
    secret comes from a compose secret, and no value is a default of compose.yaml."""
    loaded = _service_settings(services, name, RECORD_VARIABLES, tmp_path,
                               "the-operator-client-secret\n")

    assert loaded.record_feed_url == RECORD_VARIABLES["RECORD_FEED_URL"]
    assert loaded.record_feed_sender_oid == RECORD_VARIABLES["RECORD_FEED_SENDER_OID"]
    assert loaded.record_issuer == RECORD_VARIABLES["RECORD_ISSUER"]
    assert loaded.record_client_id == RECORD_VARIABLES["RECORD_CLIENT_ID"]
    assert loaded.record_redirect_uri == RECORD_VARIABLES["RECORD_REDIRECT_URI"]
    assert loaded.record_client_secret == "the-operator-client-secret"
    assert loaded.record_feed_models_file is not None


def test_the_record_models_file_is_mounted_where_the_feed_reads_it(compose, services):
    feed = services["record-feed"]
    models = environment(feed)["HEALTHIOT_RECORD_FEED_MODELS_FILE"]
    mounted = {entry["target"]: entry["source"] for entry in feed.get("configs", [])}
    assert models in mounted
    assert compose["configs"][mounted[models]]["file"].startswith("./")


def test_the_record_feed_is_off_without_the_operator_variables(services, tmp_path):
    for name in ("api", "record-feed"):
        loaded = _service_settings(services, name, {"API_PUBLIC_URL": "https://a.example"},
                                   tmp_path, "")
        assert loaded.record_feed_url == ""
        assert loaded.record_client_secret == ""


def test_the_record_feed_with_an_empty_client_secret_file_refuses_to_start(services, tmp_path):
    with pytest.raises(settings.SettingsError, match="HEALTHIOT_RECORD_CLIENT_SECRET"):
        _service_settings(services, "record-feed", RECORD_VARIABLES, tmp_path, "")


# Where each long-running service serves /metrics: the settings naming host and port.
METRICS = {**{b: ("bridge_health_host", "bridge_health_port") for b in BRIDGES},
           "api": ("api_metrics_host", "api_metrics_port"),
           "maintenance": ("maintenance_metrics_host", "maintenance_metrics_port")}


@pytest.mark.parametrize("name", sorted(METRICS))
def test_each_service_serves_metrics_to_the_compose_network_and_not_beyond(services, name):
    service = services[name]
    host_field, port_field = METRICS[name]
    env = environment(service)
    defaults = {f.name: f.default for f in dataclasses.fields(settings.Settings)}
    host = env.get(settings.env_name(host_field), defaults[host_field])
    port = int(env.get(settings.env_name(port_field), defaults[port_field]))
    assert port, f"{name} serves no /metrics"
    assert host == "0.0.0.0", f"{name}: /metrics on {host} is out of Prometheus's reach"  # noqa: S104 (inside a container)
    exposed = {int(str(p).split("/")[0]) for p in service.get("expose") or []}
    assert port in exposed, f"{name} does not expose its /metrics port {port}"
    published = {int(str(p).split("/")[0].rsplit(":", 1)[-1])
                 for p in service.get("ports") or []}
    assert port not in published, f"{name} publishes /metrics outside the compose networks"
