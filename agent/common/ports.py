"""Ports: the small interfaces a producer (dock, room) is handed to tell the rest of the agent what
happens, without knowing who listens or how it travels.

The runtime (``agent.runtime.build_agent``) passes the producer the implementations; the health
component implements both (``agent.health.ports.HealthPorts``) and publishes through the wire
(``P/dev/D/alarm/KEY``, ``P/dev/D/component/NAME``, ``P/dev/D/ratio``, all retained). A producer
never imports MQTT, the wire or health: it calls these methods and goes on.

Contract for implementations: a call never blocks on the network and never raises because
delivery failed (the implementation logs it and delivers what it can later, e.g. the uplink
republishes retained values on reconnect). A call with a code or name the vocabulary does not
know raises ``ValueError``: that is a programming error, not a delivery problem.
"""

from __future__ import annotations

from typing import Protocol


class AlarmPort(Protocol):
    """Raise and clear alarms (codes: ``agent.wire.health.CODES``).

    One alarm per (code, instance): KEY = ``code.instance`` (or ``code``). A raise of an active
    alarm with the same text changes nothing; ``since`` is kept from the first raise."""

    def raise_alarm(self, code: str, message_zh: str, message_en: str, *, source: str,
                    instance: str | None = None) -> None: ...

    def clear_alarm(self, code: str, *, source: str, instance: str | None = None) -> None: ...


class ReportPort(Protocol):
    """Retained state other parts of the fleet read (the monitor, the technician)."""

    def component_state(self, name: str, state: dict) -> None:
        """The current state of one part of the device (e.g. a dock bay ``bay-3``: its snapshot)."""
        ...

    def equipment_ratio(self, payload: dict) -> None:
        """A docking station's equipment ratio report (``agent.wire.health.RATIO_SCHEMA``)."""
        ...



class ReceiptPort(Protocol):
    """The archive keys this device pins now (``uplink trust-archive``, revocations included), to
    check a receipt kept in the ledger once more before a recorder file is erased."""

    def verify_receipt(self, receipt: dict) -> None:
        """Return when ``receipt`` carries a valid signature by a pinned, unrevoked archive key;
        otherwise raise ``EdgeError`` saying what failed."""
        ...
