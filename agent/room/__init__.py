"""Interview room (同步录音录像): overlay, compositor, segmenter."""


def make_component(agent):
    """The interview-room producer of ``edge-agent run`` (see agent/room/service.py)."""
    from .service import make_component as _make

    return _make(agent)
