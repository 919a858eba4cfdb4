"""Interview room (同步录音录像): overlay, compositor, segmenter."""


def make_component(agent, alarms=None, refresh=None):
    """The interview-room producer of ``edge-agent run`` (see agent/room/service.py): alarms go
    to ``alarms`` (an ``agent.common.ports.AlarmPort``), ``refresh()`` reports a change at once."""
    from .service import make_component as _make

    return _make(agent, alarms=alarms, refresh=refresh)
