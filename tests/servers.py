"""A real `fastgen serve` app on uvicorn (the CLI's server: h11 with the header time limit), on
127.0.0.1 with an ephemeral port, in a thread: ``with serving(app) as base: ...``."""

from __future__ import annotations

import contextlib
import threading
import time


@contextlib.contextmanager
def serving(app, **kw):
    from fastgen.serve.server import make_server

    server = make_server(app, "127.0.0.1", 0, **kw)
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    try:
        for _ in range(400):
            if server.started:
                break
            time.sleep(0.05)
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        th.join(30)
    assert not th.is_alive()
