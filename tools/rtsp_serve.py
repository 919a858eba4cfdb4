"""Serve an H.264 clip as an RTSP camera stream (GStreamer RTSP server), for tests and demos.

Run with the *system* Python, which has the GObject bindings:

    /usr/bin/python3 tools/rtsp_serve.py 8554 /cam1 clip.mp4      # prints "ready" when listening

The stream is paced as a camera would send it and ends with the file. Kill the process to
simulate a camera that drops; start it again on the same port to test reconnection.
Exit status 2 if the port cannot be bound. Based on the verified recipe in shared/recipes.
"""
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

DEMUXERS = {".mp4": "qtdemux", ".mov": "qtdemux", ".m4v": "qtdemux",
            ".ts": "tsdemux", ".mkv": "matroskademux"}


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: rtsp_serve.py PORT /PATH CLIP", file=sys.stderr)
        return 64
    port, path, clip = argv
    demux = DEMUXERS.get(clip[clip.rfind("."):].lower(), "qtdemux")
    Gst.init(None)
    srv = GstRtspServer.RTSPServer()
    srv.set_address("127.0.0.1")
    srv.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f"( filesrc location={clip} ! {demux} ! h264parse "
                       "! rtph264pay name=pay0 pt=96 config-interval=1 )")
    factory.set_shared(True)
    srv.get_mount_points().add_factory(path, factory)
    if not srv.attach(None):
        print(f"cannot listen on 127.0.0.1:{port}", file=sys.stderr, flush=True)
        return 2
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print("ready", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
