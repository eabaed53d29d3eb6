"""Where a Rerun view goes, from one string (``--view SINK`` / ``driver view --save/--spawn/--web``).

=============================  =====================================================================
``out.rrd`` (or ``file:X``)    a recording file; open it later with ``rerun out.rrd``
``spawn``                      a Rerun viewer started on this machine
``web`` / ``web:PORT``         Rerun's web viewer served here on PORT (default 9090) for a laptop or
                               phone browser, streaming from a gRPC server on PORT + 1
``rerun+http://HOST:P/proxy``  a viewer already running on another machine (``rerun`` there)
=============================  =====================================================================
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from . import require_rerun

log = logging.getLogger(__name__)

WEB_PORT = 9090


@dataclass(frozen=True)
class ViewSink:
    kind: str  # save | spawn | web | connect
    target: str = ""  # file path or URL
    port: int = WEB_PORT

    @classmethod
    def parse(cls, spec: str, default_file: str = "view.rrd") -> ViewSink:
        spec = (spec or "").strip()
        if spec in ("", "file"):
            return cls("save", default_file)
        if spec == "spawn":
            return cls("spawn")
        if spec == "web" or spec.startswith("web:"):
            port = spec.partition(":")[2] or str(WEB_PORT)
            if not port.isdigit() or not 1 <= int(port) <= 65534:
                raise ValueError(f"view sink {spec!r}: the web port must be in 1..65534")
            return cls("web", port=int(port))
        if spec.startswith(("rerun://", "rerun+http://", "rerun+https://")):
            return cls("connect", spec)
        path = spec.removeprefix("file:")
        if not path.endswith(".rrd"):
            raise ValueError(f"view sink {spec!r} must be a .rrd file, spawn, web[:PORT] or rerun+http://HOST:PORT/proxy")
        return cls("save", path)


def open_recording(name: str, sink: ViewSink, blueprint=None, recording_id: str | None = None):
    """A Rerun RecordingStream sending to ``sink`` (the web viewer's URL is logged)."""
    rr = require_rerun()
    rec = rr.RecordingStream(f"driver_{name}", recording_id=recording_id)
    if sink.kind == "save":
        rec.save(sink.target, default_blueprint=blueprint)
    elif sink.kind == "spawn":
        rec.spawn(default_blueprint=blueprint)
    elif sink.kind == "connect":
        rec.connect_grpc(sink.target, default_blueprint=blueprint)
    else:
        uri = rec.serve_grpc(grpc_port=sink.port + 1, default_blueprint=blueprint)
        rr.serve_web_viewer(web_port=sink.port, open_browser=False, connect_to=uri)
        log.info("Rerun web viewer: http://<this machine>:%d (streams from %s)", sink.port, uri)
    return rec
