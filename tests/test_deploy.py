"""The container and deployment files agree with the code, the README and each other.

No Docker here: the Dockerfile and deploy/ YAML are parsed, and the values an
operator relies on (config path, data volume, port, user, probes, secrets) are
checked against what `relay.cli` says. The real build and run is scripts/image-test.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from relay import cli
from relay import config as config_mod

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DATA_DIR = "/var/lib/kourier-relay"
RELAY_UID = 10001


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        value = json.loads(self.args)
        assert isinstance(value, list), f"{self.keyword} {self.args} is not in exec form"
        return value


def parse_dockerfile(path: Path) -> list[Instruction]:
    logical: list[str] = []
    pending = ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or (not line.strip() and not pending):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    out = []
    for text in logical:
        keyword, _, args = text.strip().partition(" ")
        out.append(Instruction(keyword.upper(), " ".join(args.split())))
    return out


def runtime_stage(instructions: list[Instruction]) -> list[Instruction]:
    """The instructions of the last stage: what the shipped image is made of."""
    last_from = max(i for i, ins in enumerate(instructions) if ins.keyword == "FROM")
    return instructions[last_from:]


def env_of(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in stage:
        if ins.keyword == "ENV":
            for pair in shlex.split(ins.args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def one(stage: list[Instruction], keyword: str) -> Instruction:
    found = [ins for ins in stage if ins.keyword == keyword]
    assert len(found) == 1, f"want exactly one {keyword} in the runtime stage, got {found}"
    return found[0]


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(ROOT / "Dockerfile")


@pytest.fixture(scope="module")
def runtime(dockerfile: list[Instruction]) -> list[Instruction]:
    return runtime_stage(dockerfile)


def load_all(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} is empty"
    return docs


def k8s_objects() -> dict[str, dict[str, Any]]:
    objects: dict[str, dict[str, Any]] = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in load_all(path):
            name = doc["metadata"]["name"] if "metadata" in doc else path.stem
            objects[f"{doc['kind']}/{name}"] = doc
    return objects


def k8s_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in k8s_objects().values() if doc["kind"] == kind]


def deployment() -> dict[str, Any]:
    (dep,) = k8s_kind("Deployment")
    return dep


def relay_container() -> dict[str, Any]:
    (container,) = deployment()["spec"]["template"]["spec"]["containers"]
    return container


def container_env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# --- Dockerfile vs. code ------------------------------------------------------------------


def test_dockerfile_config_path_and_env_var_are_the_clis(runtime: list[Instruction]) -> None:
    env = env_of(runtime)
    assert env[cli.CONFIG_ENV] == cli.DEFAULT_CONFIG_PATH
    copies = [ins.args.split() for ins in runtime if ins.keyword == "COPY"]
    assert ["config.example.yaml", cli.DEFAULT_CONFIG_PATH] in copies


def test_dockerfile_exposes_and_healthchecks_the_clis_port(runtime: list[Instruction]) -> None:
    assert one(runtime, "EXPOSE").args == str(cli.DEFAULT_PORT)
    test = one(runtime, "HEALTHCHECK").args.split(" CMD ", 1)[1]
    assert json.loads(test) == ["kourier-relay", "healthcheck"]
    # With no --url, healthcheck reads the image's config (config.example.yaml) for the address.
    example = config_mod.load(ROOT / "config.example.yaml", env={})
    assert cli.health_url(example) == f"http://127.0.0.1:{cli.DEFAULT_PORT}/healthz"


def test_example_config_listens_on_the_exposed_port() -> None:
    listen = yaml.safe_load((ROOT / "config.example.yaml").read_text())["server"]["listen"]
    assert listen.endswith(f":{cli.DEFAULT_PORT}}}"), listen


def test_dockerfile_data_volume_holds_the_sqlite_store(runtime: list[Instruction]) -> None:
    assert one(runtime, "VOLUME").exec_form() == [DATA_DIR]
    assert one(runtime, "WORKDIR").args == DATA_DIR
    store = env_of(runtime)["KOURIER_RELAY_STORE"]
    assert store.startswith("sqlite:///"), store
    assert posixpath.dirname(store.removeprefix("sqlite:///")) == DATA_DIR


def test_dockerfile_runs_as_the_non_root_relay_user(runtime: list[Instruction]) -> None:
    assert one(runtime, "USER").args == f"{RELAY_UID}:{RELAY_UID}"
    run = " ".join(ins.args for ins in runtime if ins.keyword == "RUN")
    assert re.search(rf"useradd .*--uid {RELAY_UID} .*relay\b", run), run
    assert re.search(rf"groupadd .*--gid {RELAY_UID} relay\b", run), run
    assert f"-o relay -g relay -m 0750 {DATA_DIR}" in run


def test_dockerfile_entrypoint_is_the_console_script_and_cmd_serve(
        runtime: list[Instruction]) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"kourier-relay": "relay.cli:main"}
    assert one(runtime, "ENTRYPOINT").exec_form() == ["kourier-relay"]
    (command,) = one(runtime, "CMD").exec_form()
    assert command in cli.main.commands


def test_dockerfile_base_is_an_argument_defaulting_to_pinned_official_slim(
        dockerfile: list[Instruction]) -> None:
    assert dockerfile[0].keyword == "ARG"
    name, _, default = dockerfile[0].args.partition("=")
    assert name == "BASE_IMAGE"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", default), default
    froms = [ins.args for ins in dockerfile if ins.keyword == "FROM"]
    assert froms == ["${BASE_IMAGE} AS build", "${BASE_IMAGE} AS runtime"]


def test_runtime_stage_gets_only_the_venv_from_the_build(runtime: list[Instruction]) -> None:
    copies = [ins.args for ins in runtime if ins.keyword == "COPY" and "--from" in ins.args]
    assert copies == ["--from=build /opt/venv /opt/venv"]
    assert not [ins for ins in runtime if "apt-get" in ins.args or "pip " in ins.args]


def test_dockerignore_admits_only_what_the_build_needs() -> None:
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [ln for ln in lines if ln and not ln.startswith("#")]
    assert patterns[0] == "*"
    admitted = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"]
    assert {"pyproject.toml", readme, "config.example.yaml", "relay"} <= admitted
    assert not admitted & {"tests", ".git", "deploy", ".venv"}


# --- README vs. Dockerfile ------------------------------------------------------------------

README_CONTAINER_FACTS = [
    cli.DEFAULT_CONFIG_PATH,  # /etc/kourier-relay/config.yaml
    cli.CONFIG_ENV,           # KOURIER_RELAY_CONFIG
    DATA_DIR,                 # /var/lib/kourier-relay
    str(cli.DEFAULT_PORT),    # 8080
    str(RELAY_UID),           # 10001
]


def readme_section(title_pattern: str) -> str:
    readme = ROOT / "docs" / "container.md"
    assert readme.is_file(), "docs/container.md is missing"
    text = readme.read_text()
    match = re.search(rf"^(#+) [^\n]*{title_pattern}[^\n]*$", text, re.MULTILINE | re.IGNORECASE)
    assert match, f"docs/container.md has no heading matching {title_pattern!r}"
    level = len(match.group(1))
    rest = text[match.end():]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.MULTILINE)
    return rest[: end.start()] if end else rest


@pytest.mark.parametrize("fact", README_CONTAINER_FACTS)
def test_readme_container_section_states_what_the_dockerfile_does(fact: str) -> None:
    assert fact in readme_section("Container")


# --- deploy/compose*.yaml -------------------------------------------------------------------


def test_compose_runs_one_relay_with_a_named_data_volume_and_secrets() -> None:
    (compose,) = load_all(DEPLOY / "compose.yaml")
    relay = compose["services"]["relay"]
    assert relay["build"]["context"] == ".."
    volume, _, mount = relay["volumes"][0].partition(":")
    assert mount == DATA_DIR and volume in compose["volumes"]
    assert f"{cli.DEFAULT_PORT}:{cli.DEFAULT_PORT}" in relay["ports"]
    env = relay["environment"]
    secret = env["KOURIER_WEBHOOK_TOKEN_FILE"].removeprefix("/run/secrets/")
    assert secret in relay["secrets"] and secret in compose["secrets"]
    assert env["OPS_CHAT_URL"].startswith("${OPS_CHAT_URL")


def test_compose_postgres_runs_two_relays_on_postgres_16() -> None:
    (compose,) = load_all(DEPLOY / "compose.postgres.yaml")
    services = compose["services"]
    assert services["postgres"]["image"].startswith("postgres:16")
    relay = services["relay"]
    assert relay["deploy"]["replicas"] == 2
    assert relay["environment"]["KOURIER_RELAY_STORE"].startswith("postgresql://relay:")
    assert relay["environment"]["KOURIER_RELAY_STORE"].endswith("@postgres:5432/relay")
    assert services["migrate"]["command"] == ["migrate"] and "migrate" in cli.main.commands
    assert relay["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


# --- deploy/k8s -----------------------------------------------------------------------------


def test_k8s_kustomization_lists_every_manifest() -> None:
    (kustomization,) = k8s_kind("Kustomization")
    files = {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_k8s_deployment_is_one_replica_on_sqlite_with_a_pvc() -> None:
    dep = deployment()
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    container = relay_container()
    assert container_env(container)["KOURIER_RELAY_STORE"].startswith(f"sqlite:///{DATA_DIR}/")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    claim = volumes[next(n for n, p in mounts.items() if p == DATA_DIR)]
    claim_name = claim["persistentVolumeClaim"]["claimName"]
    assert claim_name in {pvc["metadata"]["name"] for pvc in k8s_kind("PersistentVolumeClaim")}


def test_k8s_deployment_says_several_replicas_need_postgres() -> None:
    text = (DEPLOY / "k8s" / "deployment.yaml").read_text()
    assert re.search(r"#.*[Ss]everal replicas need the PostgreSQL store", text)


def test_k8s_probes_are_readyz_and_healthz_on_the_port() -> None:
    container = relay_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": cli.DEFAULT_PORT}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}


def test_k8s_pod_runs_as_the_images_non_root_user() -> None:
    pod = deployment()["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == RELAY_UID
    assert pod["securityContext"]["fsGroup"] == RELAY_UID
    assert relay_container()["securityContext"]["allowPrivilegeEscalation"] is False


def test_k8s_secret_provides_the_token_file_and_the_apprise_url() -> None:
    (secret,) = k8s_kind("Secret")
    keys = set(secret["stringData"])
    container = relay_container()
    env = container_env(container)
    ref = env["OPS_CHAT_URL"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in keys
    volumes = {v["name"]: v for v in deployment()["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    token_file = env["KOURIER_WEBHOOK_TOKEN_FILE"]
    directory, key = posixpath.split(token_file)
    secret_volume = volumes[mounts[directory]]["secret"]
    assert secret_volume["secretName"] == secret["metadata"]["name"] and key in keys


def test_k8s_configmap_is_mounted_at_the_default_config_path_and_passes_check(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (configmap,) = k8s_kind("ConfigMap")
    container = relay_container()
    assert container_env(container)[cli.CONFIG_ENV] == cli.DEFAULT_CONFIG_PATH
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment()["spec"]["template"]["spec"]["volumes"]}
    config_volume = next(n for n, v in volumes.items() if "configMap" in v)
    assert volumes[config_volume]["configMap"]["name"] == configmap["metadata"]["name"]
    assert posixpath.join(mounts[config_volume], "config.yaml") == cli.DEFAULT_CONFIG_PATH

    config = tmp_path / "config.yaml"
    config.write_text(configmap["data"]["config.yaml"])
    for name, value in container_env(container).items():
        if isinstance(value, str):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("KOURIER_RELAY_STORE", f"sqlite:{tmp_path / 'relay.db'}")
    monkeypatch.setenv("KOURIER_WEBHOOK_TOKEN", "t")
    monkeypatch.delenv("KOURIER_WEBHOOK_TOKEN_FILE", raising=False)
    monkeypatch.setenv("OPS_CHAT_URL", "json://127.0.0.1/")
    result = CliRunner().invoke(cli.main, ["check", "--strict", "-c", str(config)])
    assert result.exit_code == 0, result.output


def test_k8s_service_selects_the_deployments_pods_on_the_http_port() -> None:
    (service,) = k8s_kind("Service")
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["port"] == cli.DEFAULT_PORT and port["targetPort"] == "http"


def test_image_scripts_are_executable() -> None:
    for name in ("image-test", "make-base-image"):
        script = ROOT / "scripts" / name
        assert script.stat().st_mode & 0o111, f"{script} is not executable"
