"""Volumes of a pod template: a name, where it is mounted in every container, and one
Kubernetes volume source written as in a pod. A claim may say its access mode (`accessMode`),
which check-config cannot read from the cluster, to tell whether pods may share it."""

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

# projected (a Secret and a ConfigMap in one directory, a bound service-account token for
# Vault), downwardAPI and csi (a secrets-store CSI driver) are as common in agent pods, and
# Pod Security `restricted` allows them (its Volume Types list).
VOLUME_SOURCES = frozenset(
    {"emptyDir", "ephemeral", "persistentVolumeClaim", "nfs", "configMap", "secret", "hostPath",
     "projected", "downwardAPI", "csi"}
)
CLAIM_SOURCE = "persistentVolumeClaim"
ACCESS_MODE_KEY = "accessMode"


class AccessMode(StrEnum):
    """A PersistentVolume's access modes (Kubernetes docs, "Persistent Volumes", Access Modes):
    the Once modes attach to one node (ReadWriteOncePod: to one pod) at a time."""

    READ_WRITE_ONCE = "ReadWriteOnce"
    READ_ONLY_MANY = "ReadOnlyMany"
    READ_WRITE_MANY = "ReadWriteMany"
    READ_WRITE_ONCE_POD = "ReadWriteOncePod"


def check_source(sources: set[str], access_mode: AccessMode | None) -> None:
    """Raises ValueError unless `sources` is exactly one known volume source (and an access
    mode goes with a claim only)."""
    unknown = sources - VOLUME_SOURCES
    if unknown:
        raise ValueError(f"unknown volume source {sorted(unknown)[0]!r}; "
                         f"use one of {', '.join(sorted(VOLUME_SOURCES))}")
    if len(sources) != 1:
        raise ValueError("needs exactly one volume source, e.g. persistentVolumeClaim")
    if access_mode is not None and sources != {CLAIM_SOURCE}:
        raise ValueError(f"{ACCESS_MODE_KEY} is the access mode of a persistentVolumeClaim; "
                         "leave it out for other sources")


class Volume(BaseModel):
    """A volume mounted into every container: a name, a mount path, and one Kubernetes volume
    source (emptyDir, ephemeral, persistentVolumeClaim, nfs, configMap, secret, hostPath,
    projected, downwardAPI or csi)
    written as in a pod; for a claim, optionally its access mode."""

    model_config = ConfigDict(populate_by_name=True, extra="allow", frozen=True)

    name: str
    mount_path: str = Field(alias="mountPath")
    read_only: bool = Field(default=False, alias="readOnly")
    access_mode: AccessMode | None = Field(default=None, alias=ACCESS_MODE_KEY)

    @model_validator(mode="after")
    def _one_source(self) -> "Volume":
        check_source(set(self.model_extra or {}), self.access_mode)
        if not self.mount_path.startswith("/"):
            raise ValueError("mountPath must be absolute")
        return self

    @property
    def source(self) -> dict[str, Any]:
        return dict(self.model_extra or {})
