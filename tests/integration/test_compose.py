"""docker-compose.yml, .env.example, the Dockerfile and the load balancer, held to the code.

No Docker engine runs here, so the files are parsed and checked for what ``docker compose up --scale
gateway=3 --scale qrcode=2`` needs: commands the code really has, settings that really exist, a
healthcheck everywhere, nothing that pins a container name or host port, and no secret written down.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.__main__ import SERVICES, app_factory, build_parser
from services.launch import DEPENDS_ON
from shared.config import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
ENV_EXAMPLE = (ROOT / ".env.example").read_text()
DOCKERFILE = (ROOT / "Dockerfile").read_text()
HAPROXY = (ROOT / "deploy" / "haproxy" / "haproxy.cfg").read_text()

APP_SERVICES = SERVICES  # token, qrcode, session, gateway, webhook: scaled with --scale
SETTING_KEYS = {f"WXLOGIN_{name.upper()}" for name in Settings.model_fields}
# Settings another branch is adding. Compose may set them before the field lands; once it exists,
# delete it here (test_pending_settings_are_not_settings_yet).
PENDING_SETTINGS: set[str] = set()
# Settings no compose service receives, and why.
NOT_IN_COMPOSE = {
    "WXLOGIN_SIM_HOST": "the simulator container gets its address on its command line",
    "WXLOGIN_SIM_PORT": "the simulator container gets its port on its command line",
    "WXLOGIN_EVENT_LOOP": "the image has uvloop, and auto takes it; asyncio is for comparing the two",
}
SECRET_SETTINGS = {"WXLOGIN_SECRET", "WXLOGIN_BUS_KEY", "WXLOGIN_DATA_KEY"}
# Keys a compose service may have (a typo'd key is silently ignored by nothing: compose rejects it,
# but only where Docker runs, which is not here).
SERVICE_KEYS = {
    "image", "build", "restart", "init", "stop_grace_period", "read_only", "tmpfs", "cap_drop",
    "security_opt", "logging", "command", "entrypoint", "environment", "depends_on", "networks",
    "healthcheck", "volumes", "ports", "profiles", "hostname", "env_file",
}  # fmt: skip
INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?+][^}]*)?\}")


def services() -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = COMPOSE["services"]
    return result


def environment(service: str) -> dict[str, Any]:
    env = services()[service].get("environment", {})
    assert isinstance(env, dict), f"{service}: environment must be a mapping"
    return env


def documented_keys() -> dict[str, str]:
    """``KEY=value`` lines of .env.example (commented or not) → the comment block above each."""
    found: dict[str, str] = {}
    comment: list[str] = []
    for line in ENV_EXAMPLE.splitlines():
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            found[match.group(1)] = "\n".join(comment)
        elif line.startswith("#"):
            comment.append(line)
            continue
        if not line.strip():
            comment = []
    return found


# --- commands and health ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", APP_SERVICES)
def test_each_service_container_runs_that_service_through_the_real_command_line(name: str) -> None:
    command = services()[name]["command"]
    assert command == ["python", "-m", "services", "run", name]
    args = build_parser().parse_args(command[3:])
    assert (args.command, args.service) == ("run", name)
    assert callable(app_factory(name))


def test_the_simulator_container_runs_the_simulator_module() -> None:
    command = services()["sim"]["command"]
    assert command[:3] == ["python", "-m", "sim.wechat"]
    assert (ROOT / "sim" / "wechat" / "__main__.py").exists()
    assert {"--host", "--port"} <= set(command)


@pytest.mark.parametrize("name", sorted(COMPOSE["services"]))
def test_every_container_has_a_healthcheck(name: str) -> None:
    check = services()[name].get("healthcheck")
    assert check and check.get("test"), f"{name} has no healthcheck"
    assert not check.get("disable")
    assert check["test"][0] in ("CMD", "CMD-SHELL")


@pytest.mark.parametrize("name", APP_SERVICES)
def test_service_healthchecks_ask_that_services_readyz(name: str) -> None:
    test = services()[name]["healthcheck"]["test"]
    assert test == ["CMD", "python", "-m", "services", "ready", name]
    args = build_parser().parse_args(test[4:])
    assert (args.command, args.service) == ("ready", name)


def test_compose_uses_only_known_service_keys() -> None:
    for name, service in services().items():
        unknown = set(service) - SERVICE_KEYS
        assert not unknown, f"{name}: unknown keys {unknown}"


def test_the_four_services_run_one_image_built_from_the_dockerfile() -> None:
    images = {services()[name]["image"] for name in APP_SERVICES}
    builds = [services()[name]["build"] for name in APP_SERVICES]
    assert len(images) == 1 and all(build == builds[0] for build in builds)
    assert builds[0]["context"] == "."


def test_a_pip_mirror_set_in_dotenv_reaches_the_image_build_and_no_host_is_hard_coded() -> None:
    build = services()["token"]["build"]
    assert build["args"] == {"PIP_INDEX_URL": "${PIP_INDEX_URL:-}"}
    dockerfile = (ROOT / "Dockerfile").read_text()
    build_stage = dockerfile.split(" AS build", 1)[1].split("\nFROM ", 1)[0]
    assert 'ARG PIP_INDEX_URL=""' in build_stage
    assert "PIP_INDEX_URL=http" not in dockerfile + COMPOSE_TEXT


# --- scaling ---------------------------------------------------------------------------------------


def test_nothing_pins_a_container_name() -> None:
    assert "container_name" not in COMPOSE_TEXT


@pytest.mark.parametrize("name", APP_SERVICES)
def test_scaled_services_publish_no_host_port(name: str) -> None:
    assert "ports" not in services()[name], f"{name} would block --scale {name}=2"


def test_only_the_load_balancer_publishes_to_the_world_and_the_simulator_to_localhost() -> None:
    published = {name: s["ports"] for name, s in services().items() if "ports" in s}
    assert set(published) == {"lb", "sim"}
    assert all(str(p).startswith("127.0.0.1:") for p in published["sim"])


def test_load_balancer_finds_every_gateway_replica_through_dns() -> None:
    template = re.search(r"^\s*server-template\s+\S+\s+(\d+)\s+gateway:(\d+)", HAPROXY, re.M)
    assert template, "gateways must be discovered by name, not listed"
    slots, port = int(template.group(1)), template.group(2)
    assert slots >= 3  # --scale gateway=3 fits
    assert environment("gateway")["WXLOGIN_GATEWAY_PORT"] == port
    assert re.search(r"^\s*resolvers docker\s*$", HAPROXY, re.M)
    assert "127.0.0.11:53" in HAPROXY  # Docker's embedded DNS


def test_load_balancer_passes_websockets_checks_readyz_and_sets_forwarded_for() -> None:
    assert re.search(r"^\s*timeout tunnel\s+\d+[hm]\s*$", HAPROXY, re.M), "WebSockets need a tunnel timeout"
    assert re.search(r"^\s*mode http\s*$", HAPROXY, re.M)  # HTTP mode passes the Upgrade handshake
    assert "http-check send meth GET uri /readyz" in HAPROXY
    assert "http-request set-header X-Forwarded-For %[src]" in HAPROXY
    # Compared percent-decoded (/%6Detrics reached /metrics past a rule on the raw path).
    assert re.search(r"http-request deny .*\{ path,url_dec -m str /metrics /healthz /readyz \}", HAPROXY)
    bind = re.search(r"^\s*bind :(\d+)\s*$", HAPROXY, re.M)
    assert bind and any(str(p).endswith(f":{bind.group(1)}") for p in services()["lb"]["ports"])


CERT_IN_CONTAINER = "/usr/local/etc/haproxy/certs/site.pem"


def test_the_load_balancer_serves_tls_and_plain_http_only_redirects() -> None:
    # Security review L7: TLS on in the shipped configuration.
    tls = re.search(r"^\s*bind :(\d+) ssl crt (\S+)", HAPROXY, re.M)
    assert tls and tls.group(2) == CERT_IN_CONTAINER
    public = HAPROXY.split("\nfrontend public", 1)[1].split("\nfrontend ", 1)[0]
    assert f"bind :{tls.group(1)} ssl" in public
    assert "Strict-Transport-Security" in public
    plain = HAPROXY.split("\nfrontend http_redirect", 1)[1].split("\nfrontend ", 1)[0]
    assert re.search(r"^\s*http-request redirect scheme https code 301\s*$", plain, re.M)
    assert "default_backend" not in plain and "use_backend" not in plain
    ports = services()["lb"]["ports"]
    assert "${HTTPS_PORT:-443}:" + tls.group(1) in ports
    assert any(v.endswith(f":{os.path.dirname(CERT_IN_CONTAINER)}:ro") for v in services()["lb"]["volumes"])


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed here")
def test_haproxy_accepts_the_configuration(tmp_path: Path) -> None:
    # The certificate is mounted at run time: check with a throw-away self-signed one in its place.
    pem = tmp_path / "site.pem"
    pem.write_bytes(self_signed_pem())
    config = tmp_path / "haproxy.cfg"
    config.write_text(HAPROXY.replace(CERT_IN_CONTAINER, str(pem)))
    done = subprocess.run(
        ["haproxy", "-c", "-f", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def self_signed_pem() -> bytes:
    """A certificate for localhost and its key, as one PEM (what HAProxy's ``crt`` takes)."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM) + key_pem


# --- dependencies and restarts ---------------------------------------------------------------------


def test_services_start_after_their_dependencies_are_healthy_and_restart_on_failure() -> None:
    needs = {
        "token": {"rabbitmq", "mongo"},
        "qrcode": {"rabbitmq", "mongo", "token"},
        "session": {"rabbitmq", "mongo"},
        "gateway": {"rabbitmq", "qrcode", "session"},
        "webhook": {"rabbitmq", "mongo"},
        "lb": {"gateway"},
    }
    for name, deps in needs.items():
        depends = services()[name]["depends_on"]
        assert set(depends) == deps, name
        assert {d["condition"] for d in depends.values()} == {"service_healthy"}, name
    for name, service in services().items():
        assert service.get("restart") == "unless-stopped", name


def test_the_launcher_starts_services_in_the_order_compose_does() -> None:
    for name in APP_SERVICES:
        in_compose = set(services()[name]["depends_on"]) & set(APP_SERVICES)
        assert set(DEPENDS_ON[name]) == in_compose, name


def test_the_simulator_runs_only_in_the_dev_profile() -> None:
    assert services()["sim"]["profiles"] == ["dev"]
    assert all("profiles" not in s for name, s in services().items() if name != "sim")


def test_services_have_time_to_drain_before_they_are_killed() -> None:
    grace = int(str(services()["gateway"]["stop_grace_period"]).rstrip("s"))
    assert grace >= Settings.model_fields["shutdown_timeout_seconds"].default + 10


def test_mongo_is_a_single_node_replica_set_the_services_connect_to() -> None:
    mongo = services()["mongo"]
    assert mongo["command"][:4] == ["docker-entrypoint.sh", "mongod", "--replSet", "rs0"]
    script = (MONGO_DIR / "healthcheck.js").read_text()
    assert 'const REPLICA_SET = { _id: "rs0", members: [{ _id: 0, host: "mongo:27017" }] };' in script
    assert "hello.isreplicaset && !hello.setName" in script  # initiates only an uninitiated set
    assert mongo["healthcheck"]["test"][-1] == "/etc/wxlogin/healthcheck.js"
    for name in MONGO_ROLES:
        assert "@mongo:27017/?replicaSet=rs0&" in environment(name)["WXLOGIN_MONGO_URL"]


# --- MongoDB access control (security review M1; deploy/mongo, tests/integration/test_compose_mongo.py)

MONGO_DIR = ROOT / "deploy" / "mongo"
MONGO_ROLES: dict[str, dict[str, list[str]]] = json.loads((MONGO_DIR / "roles.json").read_text())
MONGO_PASSWORD = re.compile(r"\$\{(MONGO_([A-Z0-9_]+)_PASSWORD)(?::?[-?+][^}]*)?\}")


def test_mongod_runs_with_access_control_and_a_key_file_the_entrypoint_makes() -> None:
    mongo = services()["mongo"]
    command = mongo["command"]
    assert "--auth" in command and "--noauth" not in command
    assert "--keyFile" in command, "a replica set needs a key file under --auth"
    keyfile = command[command.index("--keyFile") + 1]
    assert mongo["entrypoint"] == ["/bin/sh", "/etc/wxlogin/entrypoint.sh"]
    assert "./deploy/mongo:/etc/wxlogin:ro" in mongo["volumes"]
    # The entrypoint makes the key file where mongod looks, in the data volume (it must outlive the
    # container: every member of a set shares it).
    entrypoint = (MONGO_DIR / "entrypoint.sh").read_text()
    assert f'keyfile="${{MONGO_KEYFILE:-{keyfile}}}"' in entrypoint
    assert keyfile.startswith("/data/db/") and "mongo-data:/data/db" in mongo["volumes"]
    assert "MONGO_INITDB_ROOT_USERNAME" not in COMPOSE_TEXT  # the image's own init would drop --auth


def test_each_data_service_connects_to_mongo_as_its_own_user_and_the_gateway_not_at_all() -> None:
    for name in services():
        url = environment(name).get("WXLOGIN_MONGO_URL")
        if name not in MONGO_ROLES:
            assert url is None, f"{name} has no MongoDB role, so no MongoDB URL"
            continue
        pattern = (
            rf"mongodb://wxlogin-{name}:\$\{{MONGO_{name.upper()}_PASSWORD:\?[^}}]*\}}@mongo:27017/"
            r"\?replicaSet=rs0&authSource=\$\{WXLOGIN_MONGO_DB:-wxlogin\}"
        )
        assert url is not None and re.fullmatch(pattern, url), f"{name}: {url}"
    assert "gateway" not in MONGO_ROLES
    assert not [k for k in environment("gateway") if "MONGO" in k]


def test_mongo_passwords_reach_only_the_mongo_container_and_their_own_service() -> None:
    for name in services():
        env = environment(name)
        values = " ".join(v for v in env.values() if isinstance(v, str))
        seen = {m.group(2).lower() for m in MONGO_PASSWORD.finditer(values)}
        seen |= {m.group(1).lower() for k in env if (m := re.fullmatch(r"MONGO_([A-Z0-9_]+)_PASSWORD", k))}
        if name == "mongo":
            assert seen == {"root", *MONGO_ROLES}
        elif name in MONGO_ROLES:
            assert seen == {name}, f"{name} holds another service's (or the root) MongoDB password: {seen}"
        else:
            assert seen == set(), f"{name} holds MongoDB passwords: {seen}"
    # Every password the users step sets is required (compose refuses to start without it).
    for key, value in environment("mongo").items():
        if key.startswith("MONGO_"):
            assert re.fullmatch(rf"\$\{{{key}:\?[^}}]+\}}", value), key


def test_env_example_asks_for_every_mongo_password_with_a_way_to_make_it() -> None:
    documented = documented_keys()
    for name in ["ROOT", *(service.upper() for service in MONGO_ROLES)]:
        comment = documented[f"MONGO_{name}_PASSWORD"]
        assert "openssl rand -hex 24" in comment and "CHANGE ME" in comment


def test_gateways_cannot_reach_mongodb_and_the_databases_cannot_reach_out() -> None:
    assert "db" not in services()["gateway"]["networks"]
    assert COMPOSE["networks"]["db"]["internal"] is True
    assert COMPOSE["networks"]["bus"]["internal"] is True
    assert services()["mongo"]["networks"] == ["db"]
    assert services()["rabbitmq"]["networks"] == ["bus"]


# --- settings --------------------------------------------------------------------------------------


def test_every_wxlogin_key_compose_sets_is_a_real_setting() -> None:
    for name in services():
        keys = {k for k in environment(name) if k.startswith("WXLOGIN_")}
        unknown = keys - SETTING_KEYS - PENDING_SETTINGS
        assert not unknown, f"{name}: not settings: {unknown}"
    interpolated = {v for v in INTERPOLATION.findall(COMPOSE_TEXT) if v.startswith("WXLOGIN_")}
    assert interpolated - SETTING_KEYS == set()


def test_pending_settings_are_not_settings_yet() -> None:
    landed = PENDING_SETTINGS & SETTING_KEYS
    assert not landed, f"{landed} exist now: remove them from PENDING_SETTINGS"


def test_every_setting_reaches_some_service_in_compose_or_is_excused() -> None:
    passed = {k for name in services() for k in environment(name)}
    missing = SETTING_KEYS - passed - set(NOT_IN_COMPOSE)
    assert not missing, f"add to docker-compose.yml (or NOT_IN_COMPOSE with a reason): {missing}"


def test_each_secret_reaches_only_the_services_that_use_it() -> None:
    holders = {key: {name for name in services() if key in environment(name)} for key in SECRET_SETTINGS}
    assert holders["WXLOGIN_SECRET"] == {"token", "session", "sim"}
    # token: the sealed access_token; qrcode: the keyed hashes of typed login codes
    assert holders["WXLOGIN_DATA_KEY"] == {"token", "session", "qrcode"}
    assert holders["WXLOGIN_BUS_KEY"] == set(APP_SERVICES)
    assert "WXLOGIN_MONGO_URL" not in environment("gateway")


def test_each_service_connects_to_the_broker_as_its_own_user() -> None:
    for name in APP_SERVICES:
        url = environment(name)["WXLOGIN_AMQP_URL"]
        pattern = (
            rf"amqp://wxlogin-{name}:\$\{{RABBITMQ_{name.upper()}_PASSWORD:\?[^}}]*\}}@rabbitmq:5672/wxlogin"
        )
        assert re.fullmatch(pattern, url), url


def test_gateways_trust_forwarded_for_only_from_the_load_balancers_network() -> None:
    subnet = COMPOSE["networks"]["edge"]["ipam"]["config"][0]["subnet"]
    assert environment("gateway")["WXLOGIN_TRUSTED_PROXIES"] == subnet
    assert services()["lb"]["networks"] == ["edge"]


def test_no_secret_is_written_in_compose() -> None:
    for name in services():
        for key, value in environment(name).items():
            if key in SECRET_SETTINGS or "PASSWORD" in key:
                assert isinstance(value, str) and re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]*\}", value), (
                    f"{name}.{key} must come from .env and be required"
                )
    # No credentials in URLs other than interpolated ones, no key-like blobs.
    assert not re.search(r"://[^\s:/@]+:(?!\$\{)[^\s@]+@", COMPOSE_TEXT)
    assert not re.search(r"[A-Za-z0-9+/]{40,}={0,2}", COMPOSE_TEXT)


# --- .env.example ----------------------------------------------------------------------------------


def test_env_example_documents_every_setting_and_no_made_up_one() -> None:
    documented = {k for k in documented_keys() if k.startswith("WXLOGIN_")}
    assert SETTING_KEYS - documented == set(), "document these in .env.example"
    assert documented - SETTING_KEYS - PENDING_SETTINGS == set()


def test_env_example_explains_each_key_in_chinese_and_english() -> None:
    cjk = re.compile(r"[\u4e00-\u9fff]")
    for key, comment in documented_keys().items():
        lines = comment.splitlines()
        assert any(cjk.search(line) for line in lines), f"{key}: no Chinese comment"
        english = [ln for ln in lines if not cjk.search(ln) and len(re.findall(r"[A-Za-z]{2,}", ln)) >= 2]
        assert english, f"{key}: no English comment"


def test_env_example_documents_every_variable_compose_reads() -> None:
    used = set(INTERPOLATION.findall(COMPOSE_TEXT))
    assert used - set(documented_keys()) == set()


def test_env_example_leaves_every_secret_empty() -> None:
    for line in ENV_EXAMPLE.splitlines():
        match = re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match and (match.group(1) in SECRET_SETTINGS or "PASSWORD" in match.group(1)):
            assert match.group(2) == "", f"{match.group(1)} must be empty in the example"


# --- the image -------------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_slim_and_runs_as_a_user() -> None:
    stages = re.findall(r"^FROM\s+(\S+)", DOCKERFILE, re.M)
    assert len(stages) >= 2
    assert all("slim" in image for image in stages)
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert DOCKERFILE.rindex("USER") > DOCKERFILE.rindex("FROM")  # in the final stage


def test_dockerfile_selects_the_service_by_command_and_bakes_in_no_secret() -> None:
    cmd = re.search(r"^CMD\s+(\[.*\])\s*$", DOCKERFILE, re.M)
    # Security review L7: the image runs one service in production mode, never the demo by default.
    assert cmd and yaml.safe_load(cmd.group(1)) == ["python", "-m", "services", "run", "gateway"]
    assert (build_parser().parse_args(yaml.safe_load(cmd.group(1))[3:])).service != "all"
    assert not re.search(r"^(ENV|ARG)\s+.*(SECRET|_KEY|PASSWORD|TOKEN)", DOCKERFILE, re.M | re.I)
    assert "ENTRYPOINT" not in DOCKERFILE  # the compose command is the whole command line
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".env" in ignored and ".git" in ignored


def test_the_webhook_service_reads_its_signing_secrets_from_an_optional_file_kept_out_of_git() -> None:
    # The clients file names the variables (secret_envs); compose cannot list names it does not know.
    assert services()["webhook"]["env_file"] == [{"path": "./webhooks.env", "required": False}]
    assert all("env_file" not in s for name, s in services().items() if name != "webhook")
    assert "webhooks.env" in (ROOT / ".gitignore").read_text().split()
    assert "webhooks.env" in (ROOT / ".dockerignore").read_text().split()
    assert "egress" in services()["webhook"]["networks"]  # it calls the sites
