"""A small HTTP control port for a running simulator: inject and clear faults.

    curl -X POST localhost:8502/faults -d '{"device": "inv-01", "kind": "timeout", "seconds": 60}'
    curl -X DELETE localhost:8502/faults            # clear all
    curl localhost:8502/faults                      # list active faults
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from simulators.modbus_server import SiteSimulator


def serve_control(sim: SiteSimulator, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802
            self._reply(200, {d: [f.kind for f in s.faults if f.active()] for d, s in sim.devices.items()})

        def do_POST(self):  # noqa: N802
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("the body must be a JSON object")
                missing = [k for k in ("device", "kind") if k not in body]
                if missing:
                    raise ValueError(f"missing {', '.join(missing)}")
                device = body["device"]
                if not isinstance(device, str) or device not in sim.devices:
                    self._reply(404, {"error": f"no device {device!r} in this simulator",
                                      "devices": sorted(sim.devices)})
                    return
                sim.inject(device, body["kind"], body.get("seconds"), body.get("channel"), body.get("code", 4))
            except (ValueError, TypeError) as exc:
                self._reply(400, {"error": str(exc)})
                return
            self._reply(200, {"ok": True})

        def do_DELETE(self):  # noqa: N802
            sim.clear()
            self._reply(200, {"ok": True})

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="sim-control").start()
    return server
