"""``[device]``: who this box is."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import ConfigModel, Ident


class DeviceConfig(ConfigModel):
    id: Ident = Field("dev-0001", description="Device id, unique in the fleet (enrolled at the archive).")
    unit_code: Ident = Field("330100000000", description="Enforcement unit code (执法单位代码).")
    unit_name: str = Field("示例执法单位", description="Enforcement unit name (执法单位名称).")
    kind: Literal["dock", "room"] = Field("dock", description="Kind of box: dock (docking station) or room (interview room).")
    location: str = Field("未设置地点 / location not set",
                          description="Place of the box; used as capture place (采集地点) where the source gives none.")
