"""The root of the config file: one table per section, each its own model and module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, model_validator

from .archive import ArchiveConfig
from .base import ConfigModel, is_secret
from .commands import CommandsConfig
from .control import ControlConfig
from .device import DeviceConfig
from .dock import DockConfig
from .encryption import EncryptionConfig
from .evidence import EvidenceConfig
from .health import HealthConfig
from .log import LogConfig
from .mqtt import MqttConfig
from .policy import PolicyConfig
from .roles import RolesConfig
from .room import RoomConfig
from .scsi import ScsiConfig
from .storage import StorageConfig
from .uplink import UplinkConfig

REDACTED = "********"


class Config(ConfigModel):
    """A validated configuration; sections as attributes (``cfg.device.id``, ``cfg.mqtt.port``).

    Build it with :func:`agent.config.load` (a file), :func:`agent.config.loads` (text) or
    :meth:`defaults` (tests and tools); each turns a refusal into one :class:`ConfigError`.
    """

    device: DeviceConfig = Field(default_factory=DeviceConfig, description="Who this box is.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Data directory and disk reserve.")
    evidence: EvidenceConfig = Field(default_factory=EvidenceConfig, description="Hash and blocks of the hash chain.")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="The MQTT broker.")
    uplink: UplinkConfig = Field(default_factory=UplinkConfig, description="Sending sealed items to the archive.")
    archive: ArchiveConfig = Field(default_factory=ArchiveConfig, description="The central archive receiver.")
    health: HealthConfig = Field(default_factory=HealthConfig, description="Health reports and alarm thresholds.")
    dock: DockConfig = Field(default_factory=DockConfig, description="Docking station (issue 4; owner: dock).")
    scsi: ScsiConfig = Field(default_factory=ScsiConfig,
                             description="Vendor SCSI command tables of recorders driven through SG_IO (issue 15).")
    room: RoomConfig = Field(default_factory=RoomConfig, description="Interview room (issue 5; owner: room session).")
    control: ControlConfig = Field(default_factory=ControlConfig, description="Local control socket (owner: room session).")
    encryption: EncryptionConfig = Field(default_factory=EncryptionConfig, description="Encryption at rest (owner: lead).")
    roles: RolesConfig = Field(default_factory=RolesConfig, description="Who may do what on the local CLI (owner: lead).")
    commands: CommandsConfig = Field(default_factory=CommandsConfig, description="Signed central commands (owner: lead).")
    policy: PolicyConfig = Field(default_factory=PolicyConfig, description="The unit's signed policy (owner: policy).")
    log: LogConfig = Field(default_factory=LogConfig, description="Logging.")

    _path: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _scsi_bays_name_known_tables(self) -> "Config":
        """A SCSI bay's ``vendor`` names a table of [scsi] (own or built-in): checked across sections."""
        known = [v.name for v in self.scsi.vendors] + list(self.scsi.builtin)
        for i, bay in enumerate(self.dock.bays):
            if getattr(bay, "vendor", None) and bay.vendor not in known:
                raise ValueError(f"dock.bays: 第 {i + 1} 项 / entry {i + 1}: 未知的命令表 / vendor {bay.vendor!r} is "
                                 f"no table of [scsi] (known: {', '.join(known) or 'none'})")
        return self

    @property
    def path(self) -> Path | None:
        """The file this configuration was loaded from (None when built in memory)."""
        return self._path

    @property
    def data_dir(self) -> Path:
        return Path(self.storage.data_dir)

    def as_dict(self, redact: bool = True) -> dict[str, dict[str, Any]]:
        """Plain values as they are written in TOML; secrets shown as ``********`` unless ``redact=False``."""
        out = self.model_dump(mode="json", exclude_none=True)
        if redact:
            for section, info in type(self).model_fields.items():
                model = info.annotation
                for key, field in model.model_fields.items():  # type: ignore[union-attr]
                    if is_secret(field) and out[section][key]:
                        out[section][key] = REDACTED
        return out

    def get(self, dotted: str) -> Any:
        """The plain value of ``SECTION.KEY`` (as written in TOML)."""
        from .keys import split_key

        section, key = split_key(dotted)
        return self.as_dict(redact=False)[section][key]

    @classmethod
    def defaults(cls, **overrides: Any) -> "Config":
        """Defaults with overrides given as ``section__key=value`` or ``**{"section.key": value}``."""
        from .file import validate

        raw: dict[str, dict[str, Any]] = {}
        for dotted, value in overrides.items():
            section, key = dotted.split("__", 1) if "__" in dotted else dotted.split(".", 1)
            raw.setdefault(section, {})[key] = value
        return validate(raw)
