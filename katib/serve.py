"""The suggestion process's main loop: serve until SIGTERM, then stop
gracefully (health NOT_SERVING first). State is in storage after every
answered call, so a kill -9 loses nothing a restart cannot rebuild."""

from __future__ import annotations

import logging
from pathlib import Path

from grpc_health.v1 import health

from autolfads.katib.servicer import create_suggestion_server
from autolfads.katib.suggestion import KatibSuggestion
from autolfads.signals import StopEvent, stop_on_signals
from autolfads.storage import Store

log = logging.getLogger(__name__)
EXIT_STOPPED = 0


def serve(store: Store, listen: str, *, port_file: Path | None = None) -> int:
    health_servicer = health.HealthServicer()
    suggestion = KatibSuggestion(store)
    server, port = create_suggestion_server(listen, suggestion, health_servicer)
    log.info("Katib suggestion service (autolfads-pbt) on port %d, storage %s", port, store.url)
    if port_file is not None:
        tmp = port_file.with_name(port_file.name + ".tmp")
        tmp.write_text(f"{port}\n")
        tmp.replace(port_file)
    stop = StopEvent()  # SIGTERM / SIGINT set it (from the main thread)
    stop_on_signals(stop)
    stop.wait()
    health_servicer.enter_graceful_shutdown()
    server.stop(5.0).wait()
    suggestion.close()  # a restarted pod takes the runs over at once
    return EXIT_STOPPED
