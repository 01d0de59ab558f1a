"""The containers a pod template declares: the build's own (`build: true`), which runs the
Jenkins agent when the agent is injected, and services beside it (a database, a Docker
daemon) that run their image's own command and share the workspace and localhost. Also the
fixed requests of the containers that sizing does not size. Pure values."""

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from workers.core.quantity import cpu_millis, memory_bytes

# The container that runs the template's `image`: the agent's (and the build's, when no
# container is marked build). The Jenkins Kubernetes plugin names its agent container so too.
AGENT_CONTAINER = "jnlp"
# The init container that copies the Jenkins agent into the pod, and the volume it copies to.
AGENT_INIT_CONTAINER = "jenkins-agent"
AGENT_VOLUME = "jenkins-agent"
DEFAULT_FIXED_CPU_MILLIS = 100
DEFAULT_FIXED_MEMORY_BYTES = 256 * 2**20
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def env_names(value: dict[str, str]) -> dict[str, str]:
    """The env's names, each one the API server takes: not empty, printable ASCII, no '='
    (k8s.io/apimachinery validation IsEnvVarName, and the relaxed IsRelaxedEnvVarName alike).
    Else every build's pod was a 422. The template's env and each container's alike."""
    for name in value:
        if not name or "=" in name or not (name.isascii() and name.isprintable()):
            raise ValueError(f"{name!r}: not a name Kubernetes takes for an environment "
                             "variable (printable ASCII, no '=')")
    return value


def positive_millis(value: Any) -> int:
    millis = cpu_millis(value)
    if millis <= 0:
        raise ValueError("must be more than 0")
    return millis


def positive_bytes(value: Any) -> int:
    nbytes = memory_bytes(value)
    if nbytes <= 0:
        raise ValueError("must be more than 0")
    return nbytes


class Container(BaseModel):
    """A container beside the agent's. `build: true` marks it as the build's: sizing decides
    its resources (the template's cpu and memory) and, with agent injection, it runs the
    Jenkins agent. The others are services with the fixed `cpu` and `memory` requests, running
    their image's command unless `command`/`args` are given."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid",
                              frozen=True)

    name: str
    image: str = Field(min_length=1)
    command: tuple[str, ...] | None = None
    args: tuple[str, ...] | None = None
    tty: bool | None = None
    working_dir: str | None = None  # default: the template's workdir (the shared workspace)
    env: dict[str, str] = {}
    build: bool = False
    cpu: int = DEFAULT_FIXED_CPU_MILLIS
    memory: int = DEFAULT_FIXED_MEMORY_BYTES

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _DNS_LABEL.fullmatch(value):
            raise ValueError("must be a DNS label (lower-case letters, digits, '-'; at most 63)")
        if value == AGENT_CONTAINER:
            raise ValueError("'jnlp' is the agent container: set it with the template's image, "
                             "or change it with podSpecPatch")
        if value == AGENT_INIT_CONTAINER:
            raise ValueError(f"{AGENT_INIT_CONTAINER!r} is the init container that copies the "
                             "Jenkins agent into the pod; choose another name")
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        return env_names(value)  # a service container's env was not checked

    @field_validator("cpu", mode="before")
    @classmethod
    def _cpu(cls, value: Any) -> int:
        return positive_millis(value)

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> int:
        return positive_bytes(value)
