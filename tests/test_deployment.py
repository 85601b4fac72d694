"""The Docker deployment, checked against the code without a Docker engine.

docker-compose.yml is read the way Compose reads it (YAML first, then ``${VAR:-default}``
interpolation of every value, here with no variable set, so the defaults count). Each
service's command is resolved against the real command-line programs: regbench's click
group, uvicorn, celery (and Flower's options), mlflow. Every ``REGBENCH_*`` variable
must be a field of ``service.settings.Settings``, every dependency a service that can
satisfy its condition, every named volume declared. The Dockerfile is parsed too.
Only ``docker compose config`` needs Docker; that one test is skipped without it.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import inspect
import re
import shlex
import shutil
import subprocess
import tomllib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml
from sqlalchemy.engine import make_url

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = ROOT / "pyproject.toml"

SETTINGS_PREFIX = "REGBENCH_"
DEPENDENCY_CONDITIONS = {
    "service_started",
    "service_healthy",
    "service_completed_successfully",
}
POSTGRES_INIT_DIR = "/docker-entrypoint-initdb.d"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ... and $$ (a literal $).
INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<operator>:?[-?+])(?P<default>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


# --------------------------------------------------------------------------- compose


class InterpolationError(ValueError):
    """A ``$`` expression that does not resolve without the operator's environment."""


def interpolate(text: str, environment: Mapping[str, str]) -> str:
    """Compose's variable substitution in one string value."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["bare"]:
            raise InterpolationError(f"${match['bare']}: write ${{{match['bare']}:-default}}")
        name, operator, default = match["name"], match["operator"], match["default"]
        value = environment.get(name)
        if operator == ":-":
            return value or default
        if operator == "-":
            return default if value is None else value
        if operator is None and value is not None:
            return value
        raise InterpolationError(f"{match[0]} has no default: `docker compose up` needs {name}")

    return INTERPOLATION.sub(substitute, text)


def interpolate_values(node: Any, environment: Mapping[str, str]) -> Any:
    """Interpolate every string value (not the keys), as Compose does after parsing."""
    if isinstance(node, str):
        return interpolate(node, environment)
    if isinstance(node, list):
        return [interpolate_values(item, environment) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_values(value, environment) for key, value in node.items()}
    return node


def string_values(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from string_values(item)
    elif isinstance(node, dict):
        for value in node.values():
            yield from string_values(value)


RAW_COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
COMPOSE: dict[str, Any] = interpolate_values(RAW_COMPOSE, environment={})
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
DECLARED_VOLUMES: set[str] = set(COMPOSE.get("volumes") or {})


def service_command(service: Mapping[str, Any]) -> list[str]:
    command = service.get("command")
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def service_environment(service: Mapping[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        pairs = (item.partition("=") for item in environment)
        return {key: value for key, _, value in pairs}
    return {key: "" if value is None else str(value) for key, value in environment.items()}


def regbench_settings(service: Mapping[str, Any]) -> dict[str, str]:
    """The service's REGBENCH_* variables as Settings field names."""
    return {
        key.removeprefix(SETTINGS_PREFIX).lower(): value
        for key, value in service_environment(service).items()
        if key.startswith(SETTINGS_PREFIX)
    }


def service_settings(service: Mapping[str, Any]) -> Settings:
    return Settings(_env_file=None, **regbench_settings(service))  # type: ignore[call-arg]


def dependencies(service: Mapping[str, Any]) -> dict[str, str]:
    """``depends_on`` as {service: condition} (the list form means service_started)."""
    depends_on = service.get("depends_on") or {}
    if isinstance(depends_on, list):
        return dict.fromkeys(depends_on, "service_started")
    return {
        name: (options or {}).get("condition", "service_started")
        for name, options in depends_on.items()
    }


@dataclass(frozen=True)
class Mount:
    source: str
    target: str

    @property
    def is_named_volume(self) -> bool:
        return bool(self.source) and not self.source.startswith((".", "/", "~"))


def mounts(service: Mapping[str, Any]) -> list[Mount]:
    found = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            found.append(Mount(source, rest.partition(":")[0]) if rest else Mount("", source))
        else:
            found.append(Mount(str(volume.get("source", "")), str(volume["target"])))
    return found


@dataclass(frozen=True)
class PublishedPort:
    host_ip: str
    host_port: int
    container_port: int
    protocol: str


def published_ports(service: Mapping[str, Any]) -> list[PublishedPort]:
    found = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            found.append(
                PublishedPort(
                    str(port.get("host_ip", "0.0.0.0")),
                    int(port["published"]),
                    int(port["target"]),
                    str(port.get("protocol", "tcp")),
                )
            )
            continue
        mapping, _, protocol = str(port).partition("/")
        parts = mapping.split(":")
        assert len(parts) in (2, 3), f"publish {port!r} as [HOST_IP:]HOST_PORT:CONTAINER_PORT"
        host_ip = parts[0] if len(parts) == 3 else "0.0.0.0"
        found.append(PublishedPort(host_ip, int(parts[-2]), int(parts[-1]), protocol or "tcp"))
    return found


def services_running(program: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Services whose command starts with ``program`` (e.g. ``["regbench", "worker"]``)."""
    return {
        name: service
        for name, service in SERVICES.items()
        if service_command(service)[: len(program)] == list(program)
    }


def option_value(argv: Sequence[str], option: str) -> str:
    position = list(argv).index(option)
    return argv[position + 1]


# --------------------------------------------------------------------------- click


@dataclass
class ResolvedCommand:
    """A command line resolved against a click program."""

    path: list[str]
    command: click.Command
    options: dict[str, str | None] = field(default_factory=dict)
    arguments: list[str] = field(default_factory=list)
    passed_on: list[str] = field(default_factory=list)  # unknown options a command hands on


def find_option(command: click.Command, name: str) -> click.Option | None:
    for param in command.params:
        if isinstance(param, click.Option) and name in (*param.opts, *param.secondary_opts):
            return param
    return None


def resolve_click(program: click.Command, name: str, argv: Sequence[str]) -> ResolvedCommand:
    """Walk ``argv`` (after the program's ``name``) through ``program``'s groups and options;
    fails on an unknown subcommand or option, a missing value or a value of the wrong type."""
    ctx = click.Context(program, info_name=name)
    resolved = ResolvedCommand([name], program)
    tokens = list(argv)
    while tokens:
        token = tokens.pop(0)
        command = resolved.command
        where = " ".join(resolved.path)
        if token.startswith("-") and token != "-":
            name, has_inline_value, inline_value = token.partition("=")
            option = find_option(command, name)
            if option is None:
                assert command.context_settings.get("ignore_unknown_options"), (
                    f"`{where}` has no option {name}"
                )
                resolved.passed_on.append(token)
                continue
            if option.is_flag or option.count:
                assert not has_inline_value, f"`{where} {name}` is a flag and takes no value"
                resolved.options[name] = None
                continue
            if has_inline_value:
                value = inline_value
            else:
                assert tokens, f"`{where} {name}` needs a value"
                value = tokens.pop(0)
            if not isinstance(option.type, click.Path):  # paths exist in the container only
                try:
                    option.type.convert(value, option, ctx)
                except click.BadParameter as exc:
                    pytest.fail(f"`{where} {name} {value}`: {exc.format_message()}")
            resolved.options[name] = value
        elif isinstance(command, click.Group) and not resolved.arguments:
            subcommand = command.get_command(ctx, token)
            assert subcommand is not None, f"`{where}` has no command {token!r}"
            ctx = click.Context(subcommand, parent=ctx, info_name=token)
            resolved.command = subcommand
            resolved.path.append(token)
        else:
            resolved.arguments.append(token)
    return resolved


def check_regbench(argv: Sequence[str]) -> None:
    from client.cli import main

    resolved = resolve_click(main, "regbench", argv)
    assert not isinstance(resolved.command, click.Group), f"`{' '.join(resolved.path)}` is a group"


def check_uvicorn(argv: Sequence[str]) -> None:
    from uvicorn.main import main

    resolved = resolve_click(main, "uvicorn", argv)
    assert len(resolved.arguments) == 1, f"uvicorn takes one APP argument, got {resolved.arguments}"
    module_name, _, attribute = resolved.arguments[0].partition(":")
    target = getattr(importlib.import_module(module_name), attribute, None)
    assert target is not None, f"{module_name} has no {attribute}"
    if "--factory" in resolved.options:
        assert callable(target), f"{resolved.arguments[0]} is not a factory"
        inspect.signature(target).bind()  # uvicorn calls the factory without arguments


def check_celery(argv: Sequence[str]) -> None:
    from celery import Celery
    from celery.bin.celery import celery

    resolved = resolve_click(celery, "celery", argv)
    app_module = resolved.options.get("-A") or resolved.options.get("--app")
    assert app_module, "celery needs -A <module> to find the regbench app"
    module = importlib.import_module(app_module)
    assert isinstance(getattr(module, "app", None), Celery), f"{app_module} has no Celery `app`"
    if resolved.path[-1] == "flower":
        check_flower_options(resolved.passed_on)


def check_flower_options(options: Sequence[str]) -> None:
    assert importlib.util.find_spec("flower") is not None, "flower is not installed"
    importlib.import_module("flower.options")  # defines Flower's tornado options
    from tornado.options import options as tornado_options

    for option in options:
        name, has_value, _ = option.removeprefix("--").partition("=")
        assert name in tornado_options, f"flower has no option --{name}"
        assert has_value or isinstance(getattr(tornado_options, name), bool), (
            f"flower reads --{name}=VALUE (one token)"
        )


def check_mlflow(argv: Sequence[str]) -> None:
    from mlflow.cli import cli

    resolve_click(cli, "mlflow", argv)


PROGRAMS = {
    "regbench": check_regbench,
    "uvicorn": check_uvicorn,
    "celery": check_celery,
    "mlflow": check_mlflow,
}
# Services of the regbench image (the others run their own image's program).
IMAGE_SERVICES = sorted(name for name, service in SERVICES.items() if "build" in service)


# --------------------------------------------------------------------------- Dockerfile


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def read_instructions(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined; comments (and directives) dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


INSTRUCTIONS = read_instructions(DOCKERFILE)


def declared_args(instructions: Sequence[Instruction]) -> dict[str, str | None]:
    args: dict[str, str | None] = {}
    for instruction in instructions:
        if instruction.keyword == "ARG":
            name, has_default, default = instruction.arguments.partition("=")
            args[name] = default.strip("\"'") if has_default else None
    return args


@dataclass(frozen=True)
class Stage:
    image: str
    name: str | None


def stages(instructions: Sequence[Instruction]) -> list[Stage]:
    found = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            words = [word for word in instruction.arguments.split() if not word.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            found.append(Stage(words[0], name))
    return found


def global_args(instructions: Sequence[Instruction]) -> dict[str, str | None]:
    """ARGs before the first FROM: the only ones a FROM line can use."""
    first_from = next(i for i, ins in enumerate(instructions) if ins.keyword == "FROM")
    return declared_args(instructions[:first_from])


def substitute_args(text: str, args: Mapping[str, str | None]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2]) or "", text)


def copied_sources(instructions: Sequence[Instruction]) -> list[str]:
    sources = []
    for instruction in instructions:
        if instruction.keyword == "COPY":
            words = [word for word in instruction.arguments.split() if not word.startswith("--")]
            sources += [source.rstrip("/") for source in words[:-1]]
    return sources


def position(instructions: Sequence[Instruction], keyword: str, contains: str) -> int:
    for index, instruction in enumerate(instructions):
        if instruction.keyword == keyword and contains in instruction.arguments:
            return index
    pytest.fail(f"the Dockerfile has no {keyword} with {contains!r}")


def copy_position(instructions: Sequence[Instruction], source: str) -> int:
    for index, instruction in enumerate(instructions):
        if source in copied_sources([instruction]):
            return index
    pytest.fail(f"the Dockerfile never copies {source}")


def dockerignore_patterns() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line.rstrip("/") for line in lines if line and not line.startswith("#")]


def packaged_top_levels() -> list[str]:
    """The packages pyproject.toml ships (``regcore*`` -> ``regcore``)."""
    pyproject = tomllib.loads(PYPROJECT.read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    return [pattern.removesuffix("*") for pattern in include]


# =========================================================================== tests: compose


def test_every_variable_has_a_default() -> None:
    # A plain `docker compose up` must work with no .env file.
    for text in string_values(RAW_COMPOSE):
        interpolate(text, environment={})


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_has_an_image_or_a_buildable_context(name: str) -> None:
    service = SERVICES[name]
    assert "image" in service or "build" in service, f"{name}: neither image nor build"
    build = service.get("build")
    if build is None:
        return
    build = {"context": build} if isinstance(build, str) else build
    context = (COMPOSE_FILE.parent / build.get("context", ".")).resolve()
    assert context.is_dir(), f"{name}: build context {context} is missing"
    dockerfile = context / build.get("dockerfile", "Dockerfile")
    assert dockerfile.is_file(), f"{name}: {dockerfile} is missing"
    instructions = read_instructions(dockerfile)
    args = dict(build.get("args") or {})
    unknown = set(args) - set(declared_args(instructions))
    assert not unknown, f"{name}: build args {sorted(unknown)} are not ARGs of {dockerfile.name}"
    if "DEVICE" in args:
        stage_names = {stage.name for stage in stages(instructions)}
        assert f"base-{args['DEVICE']}" in stage_names, f"{name}: no stage base-{args['DEVICE']}"


@pytest.mark.parametrize("name", IMAGE_SERVICES)
def test_service_command_exists_with_these_options(name: str) -> None:
    command = service_command(SERVICES[name])
    assert command, f"{name}: say which process this service runs"
    program, *argv = command
    assert program in PROGRAMS, f"{name}: unknown program {program!r} (not installed by the image)"
    PROGRAMS[program](argv)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_regbench_variables_are_settings(name: str) -> None:
    values = regbench_settings(SERVICES[name])
    unknown = set(values) - set(Settings.model_fields)
    assert not unknown, f"{name}: {sorted(unknown)} are not fields of service.settings.Settings"
    service_settings(SERVICES[name])  # and every value validates


def test_services_agree_on_shared_settings() -> None:
    values_by_setting: dict[str, set[str]] = {}
    for service in SERVICES.values():
        for setting, value in regbench_settings(service).items():
            values_by_setting.setdefault(setting, set()).add(value)
    differing = {
        setting: values for setting, values in values_by_setting.items() if len(values) > 1
    }
    assert not differing, f"services disagree on {differing}"


def test_visibility_timeout_outlasts_the_longest_job() -> None:
    # Redis redelivers an unacknowledged job after the visibility timeout; a job may run
    # for the time limit plus the supervisor's stop grace plus the task's margin.
    from worker.supervisor import STOP_GRACE_S
    from worker.tasks import TIME_LIMIT_MARGIN_S

    for name in services_running(["regbench", "worker"]):
        settings = service_settings(SERVICES[name])
        longest_job_s = settings.job_time_limit_s + STOP_GRACE_S + TIME_LIMIT_MARGIN_S
        assert settings.visibility_timeout_s > longest_job_s, name


def test_default_visibility_timeout_outlasts_the_default_job_time_limit() -> None:
    from worker.supervisor import STOP_GRACE_S
    from worker.tasks import TIME_LIMIT_MARGIN_S

    fields = Settings.model_fields  # the defaults, whatever this shell's REGBENCH_* say
    longest_job_s = fields["job_time_limit_s"].default + STOP_GRACE_S + TIME_LIMIT_MARGIN_S
    assert fields["visibility_timeout_s"].default > longest_job_s


def test_service_urls_name_compose_services() -> None:
    for name, service in SERVICES.items():
        if not regbench_settings(service):
            continue
        settings = service_settings(service)
        assert make_url(settings.job_store_url).host in SERVICES, name
        assert urlsplit(settings.celery_broker_url).hostname in SERVICES, name
        tracking = urlsplit(settings.tracking_uri)
        assert tracking.hostname in SERVICES, name
        server_argv = service_command(SERVICES[tracking.hostname])
        assert option_value(server_argv, "--port") == str(tracking.port), name


def test_mlflow_accepts_the_host_names_it_is_called_by() -> None:
    from mlflow.server.security_utils import is_allowed_host_header

    (server,) = services_running(["mlflow", "server"]).values()
    allowed = option_value(service_command(server), "--allowed-hosts").split(",")
    callers = set()
    for service in SERVICES.values():
        if regbench_settings(service):
            settings = service_settings(service)
            callers.add(urlsplit(settings.tracking_uri).netloc)
            if settings.mlflow_ui_url:
                callers.add(urlsplit(settings.mlflow_ui_url).netloc)
    rejected = {host for host in callers if not is_allowed_host_header(allowed, host)}
    assert not rejected, f"mlflow server --allowed-hosts rejects {sorted(rejected)}"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_dependencies_can_be_met(name: str) -> None:
    for target, condition in dependencies(SERVICES[name]).items():
        assert target in SERVICES, f"{name} depends on {target}, which is not a service"
        assert condition in DEPENDENCY_CONDITIONS, f"{name} -> {target}: condition {condition}"
        if condition == "service_healthy":
            healthcheck = SERVICES[target].get("healthcheck") or {}
            assert healthcheck.get("test") and not healthcheck.get("disable"), (
                f"{name} waits for {target} to be healthy, but {target} has no healthcheck"
            )
        if condition == "service_completed_successfully":
            assert SERVICES[target].get("restart", "no") in ("no", "on-failure"), (
                f"{target} is a one-shot step; restarting it forever never completes"
            )


def test_api_healthcheck_asks_healthz() -> None:
    for name in services_running(["uvicorn"]):
        test = " ".join(SERVICES[name]["healthcheck"]["test"])
        assert "/healthz" in test, name


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_volumes_are_declared_and_bind_sources_exist(name: str) -> None:
    for mount in mounts(SERVICES[name]):
        if mount.is_named_volume:
            assert mount.source in DECLARED_VOLUMES, f"{name}: volume {mount.source} undeclared"
        elif mount.source:
            source = (COMPOSE_FILE.parent / mount.source).resolve()
            assert source.exists(), f"{name}: bind mount source {source} is missing"


def test_workers_share_one_runs_volume() -> None:
    # A redelivered job resumes from the checkpoint in runs_dir, on whichever worker.
    workers = services_running(["regbench", "worker"])
    assert workers
    runs_volumes = set()
    for name, service in workers.items():
        runs_dir = str(service_settings(service).runs_dir)
        volume = [m.source for m in mounts(service) if m.target == runs_dir and m.is_named_volume]
        assert volume, f"{name}: no named volume at {runs_dir}"
        runs_volumes.update(volume)
    assert len(runs_volumes) == 1, f"workers keep runs in different volumes: {runs_volumes}"


def test_gpu_worker_reserves_nvidia_gpus_and_builds_cuda() -> None:
    gpu_workers = {
        name: service
        for name, service in services_running(["regbench", "worker"]).items()
        if "--cpu" not in service_command(service)
    }
    assert gpu_workers, "no worker serves the gpu queue"
    for name, service in gpu_workers.items():
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert any(
            device.get("driver") == "nvidia" and "gpu" in device.get("capabilities", [])
            for device in devices
        ), name
        assert service["build"]["args"]["DEVICE"] == "cuda", name


def test_published_ports_do_not_collide() -> None:
    ports = [
        (port.host_port, port.protocol)
        for service in SERVICES.values()
        for port in published_ports(service)
    ]
    collisions = [port for port, count in Counter(ports).items() if count > 1]
    assert not collisions, f"host ports published twice: {collisions}"


def test_postgres_holds_the_job_store_and_mlflow_databases() -> None:
    (postgres,) = [s for s in SERVICES.values() if str(s.get("image", "")).startswith("postgres")]
    environment = service_environment(postgres)
    created = {environment["POSTGRES_DB"]}
    for mount in mounts(postgres):
        if mount.target.startswith(POSTGRES_INIT_DIR) and not mount.is_named_volume:
            sql = (COMPOSE_FILE.parent / mount.source).read_text()
            created.update(re.findall(r"CREATE DATABASE\s+\"?(\w+)", sql, flags=re.IGNORECASE))
    (mlflow,) = services_running(["mlflow", "server"]).values()
    urls = [make_url(option_value(service_command(mlflow), "--backend-store-uri"))]
    urls += [
        make_url(service_settings(service).job_store_url)
        for service in SERVICES.values()
        if "database_url" in regbench_settings(service)
    ]
    for url in urls:
        assert url.database in created, f"{url.database} is never created"
        assert url.username == environment["POSTGRES_USER"], url
        assert url.password == environment["POSTGRES_PASSWORD"], url


def test_redis_keeps_queued_messages_across_restarts() -> None:
    (redis,) = [s for s in SERVICES.values() if str(s.get("image", "")).startswith("redis")]
    assert option_value(service_command(redis), "--appendonly") == "yes"
    assert any(m.is_named_volume and m.target == "/data" for m in mounts(redis))


# =========================================================================== tests: Dockerfile


def test_dockerfile_has_cpu_and_cuda_bases_chosen_by_device() -> None:
    args = global_args(INSTRUCTIONS)
    assert args.get("DEVICE") == "cpu"
    by_name = {stage.name: stage for stage in stages(INSTRUCTIONS)}
    assert by_name["base-cpu"].image == "python:3.11-slim-bookworm"
    cuda_image = substitute_args(by_name["base-cuda"].image, args)
    assert cuda_image.startswith("nvidia/cuda:"), cuda_image
    assert "cudnn-runtime-ubuntu22.04" in cuda_image, cuda_image
    assert stages(INSTRUCTIONS)[-1].image == "base-${DEVICE}"
    cuda_install = position(INSTRUCTIONS, "RUN", "python3.11-venv")
    assert cuda_install > position(INSTRUCTIONS, "FROM", "AS base-cuda")


def test_dockerfile_installs_dependencies_before_the_source() -> None:
    copy_pyproject = copy_position(INSTRUCTIONS, "pyproject.toml")
    install_dependencies = position(INSTRUCTIONS, "RUN", "pip install '.[service]'")
    first_package = min(copy_position(INSTRUCTIONS, p) for p in packaged_top_levels())
    install_source = position(INSTRUCTIONS, "RUN", "--editable .")
    assert copy_pyproject < install_dependencies < first_package < install_source


def test_image_holds_the_packages_with_their_migrations() -> None:
    # service.schema finds alembic.ini and migrations/ beside the packages: the image
    # must copy them and install the packages in place (editable), not into site-packages.
    from service import schema

    assert Path(schema.__file__).resolve().parents[1] == schema.ROOT
    needed = [*packaged_top_levels(), "alembic.ini", "migrations"]
    copied = copied_sources(INSTRUCTIONS)
    assert not set(needed) - set(copied), f"not copied: {sorted(set(needed) - set(copied))}"
    ignored = [p for p in needed if any(fnmatch.fnmatch(p, pat) for pat in dockerignore_patterns())]
    assert not ignored, f".dockerignore drops {ignored}"


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = set(dockerignore_patterns())
    assert {".git", ".venv", ".env", "regbench-data"} <= patterns


def test_image_runs_as_a_service_user_with_data_dir() -> None:
    users = [ins.arguments for ins in INSTRUCTIONS if ins.keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"
    environment = " ".join(ins.arguments for ins in INSTRUCTIONS if ins.keyword == "ENV")
    assert "REGBENCH_DATA_DIR=/data" in environment
    assert "PYTHONUNBUFFERED=1" in environment


def test_torch_index_is_optional() -> None:
    assert declared_args(INSTRUCTIONS)["TORCH_INDEX_URL"] == ""


# =========================================================================== tests: docker


def docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    result = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    return result.returncode == 0


@pytest.mark.skipif(
    not docker_compose_available(),
    reason="`docker compose version` fails here (no docker CLI or no compose plugin); "
    "the file is still checked by every other test in this module",
)
def test_docker_compose_accepts_the_file() -> None:
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), "--profile", "gpu", "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
