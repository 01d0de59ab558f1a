"""The containers of a pod template beside the Jenkins agent (`jnlp`): tool containers such as
maven, node or kaniko, each sharing the workspace, and the fixed requests of those that are
not sized. Pure values."""

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from workers.core.quantity import cpu_millis, memory_bytes

AGENT_CONTAINER = "jnlp"
# A tool container with neither command nor args keeps running on `cat` with a TTY, as the
# Jenkins Kubernetes plugin's default does, so `container('maven') { sh ... }` finds it alive.
IDLE_COMMAND = ("cat",)
DEFAULT_FIXED_CPU_MILLIS = 100
DEFAULT_FIXED_MEMORY_BYTES = 256 * 2**20
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


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
    """A tool container. `build: true` marks it as the build's: sizing decides its resources
    (the template's cpu and memory). The others get the fixed `cpu` and `memory` requests."""

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
        if not _DNS_LABEL.match(value):
            raise ValueError("must be a DNS label (lower-case letters, digits, '-'; at most 63)")
        if value == AGENT_CONTAINER:
            raise ValueError("'jnlp' is the agent container: set it with the template's image, "
                             "or change it with podSpecPatch")
        return value

    @field_validator("cpu", mode="before")
    @classmethod
    def _cpu(cls, value: Any) -> int:
        return positive_millis(value)

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> int:
        return positive_bytes(value)

    @property
    def idle(self) -> bool:
        return self.command is None and self.args is None
