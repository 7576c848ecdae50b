"""The shared life cycle of the tests' local HTTP servers (127.0.0.1, a free port, a thread)."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer


class LocalServer:
    """Subclasses call ``_serve(handler_class, port)`` in __init__; ``with server:`` runs it."""

    class _Server(ThreadingHTTPServer):
        request_queue_size = 256  # the default listen backlog of 5 would serialise bursts
        daemon_threads = True

    def _serve(self, handler, port: int = 0) -> None:
        self.httpd = self._Server(("127.0.0.1", port), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        # (the default 0.5 s poll made every server test wait up to half a second to shut down)

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
