"""Volumes of a pod template: a name, where it is mounted in every container, and one
Kubernetes volume source written as in a pod."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

VOLUME_SOURCES = frozenset(
    {"emptyDir", "persistentVolumeClaim", "nfs", "configMap", "secret", "hostPath"}
)


class Volume(BaseModel):
    """A volume mounted into the agent: a name, a mount path, and one Kubernetes volume source
    (emptyDir, persistentVolumeClaim, nfs, configMap, secret or hostPath) written as in a pod."""

    model_config = ConfigDict(populate_by_name=True, extra="allow", frozen=True)

    name: str
    mount_path: str = Field(alias="mountPath")
    read_only: bool = Field(default=False, alias="readOnly")

    @model_validator(mode="after")
    def _one_source(self) -> "Volume":
        sources = set(self.model_extra or {})
        unknown = sources - VOLUME_SOURCES
        if unknown:
            raise ValueError(f"unknown volume source {sorted(unknown)[0]!r}; "
                             f"use one of {', '.join(sorted(VOLUME_SOURCES))}")
        if len(sources) != 1:
            raise ValueError("needs exactly one volume source, e.g. persistentVolumeClaim")
        if not self.mount_path.startswith("/"):
            raise ValueError("mountPath must be absolute")
        return self

    @property
    def source(self) -> dict[str, Any]:
        return dict(self.model_extra or {})
