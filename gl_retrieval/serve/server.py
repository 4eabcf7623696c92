"""Run the service under uvicorn: load everything, then bind; drain on SIGTERM."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

from gl_retrieval._deps import require
from gl_retrieval.config import PipelineConfig, ServeConfig
from gl_retrieval.errors import ConfigError, GLRetrievalError

__all__ = [
    "API_KEY_ENV",
    "LOOPBACK_NAMES",
    "allowed_hosts_for",
    "api_key_for",
    "check_bind",
    "check_port_free",
    "create_server",
    "is_loopback",
]

#: Environment variable read when the config has no ``serve.api_key``.
API_KEY_ENV = "GL_RETRIEVAL_API_KEY"
#: The ``Host`` names a loopback-bound server answers when ``serve.allowed_hosts`` is unset.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")

log = logging.getLogger("gl_retrieval.serve")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_key_for(cfg: ServeConfig) -> str | None:
    """``serve.api_key``, else ``$GL_RETRIEVAL_API_KEY``, else None (no auth)."""
    if cfg.api_key is not None and cfg.api_key.get_secret_value():
        return cfg.api_key.get_secret_value()
    return os.environ.get(API_KEY_ENV) or None


def allowed_hosts_for(cfg: ServeConfig, host: str) -> tuple[str, ...] | None:
    """``serve.allowed_hosts``; unset, the loopback names (and ``host``) on a loopback bind, so
    that a page that rebinds its own name to 127.0.0.1 is refused; else None (any Host).

    Example:
        >>> allowed_hosts_for(ServeConfig(), "127.0.0.1")
        ('localhost', '127.0.0.1', '::1')
        >>> allowed_hosts_for(ServeConfig(), "0.0.0.0") is None
        True
    """
    if cfg.allowed_hosts is not None:
        return cfg.allowed_hosts
    if is_loopback(host):
        return LOOPBACK_NAMES if host in LOOPBACK_NAMES else (*LOOPBACK_NAMES, host)
    return None


def check_bind(host: str, *, api_key: str | None, insecure: bool) -> None:
    """Refuse a non-loopback address without an API key, unless ``insecure``.

    Raises:
        ConfigError: the bind would expose an open server.
    """
    if not is_loopback(host) and api_key is None and not insecure:
        raise ConfigError(
            f"refusing to serve on {host} without an API key: set serve.api_key or "
            f"${API_KEY_ENV}, bind 127.0.0.1, or pass --insecure"
        )


def check_port_free(host: str, port: int) -> None:
    """Fail fast when ``host:port`` is already taken, before any model loads.

    Binds (and closes at once) a socket to each address ``host`` resolves to, with the
    options uvicorn's listener uses (``SO_REUSEADDR``, IPv6-only), so a port in TIME_WAIT
    passes and a port another process listens on does not. Port 0 (any free port) is not
    checked. Other bind errors are left to uvicorn, which reports them as it always has.

    Raises:
        GLRetrievalError: the port is in use (the CLI exits 1 with that one line).
    """
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError:
        return  # an unresolvable host: uvicorn's own error says so
    for family, kind, proto, _name, addr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(addr)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise GLRetrievalError(
                        f"port {port} on {host} is already in use (another `gl-retrieval "
                        f"serve`?): stop what listens there, or pass another --port"
                    ) from None


def create_server(
    config: PipelineConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    insecure: bool = False,
    pipeline: Any = None,
    log_level: str = "info",
) -> Any:
    """A ready ``uvicorn.Server`` whose models and index are already loaded.

    The socket is bound only by ``server.run()``, after everything has loaded. uvicorn
    handles SIGTERM/SIGINT: it stops accepting, lets in-flight requests finish within
    ``serve.drain_timeout_s`` and returns, so the process exits 0.

    Args:
        config: The pipeline config (its ``serve`` section, or the defaults).
        host: Address to bind.
        port: Port to bind (0: any free port).
        insecure: Allow a non-loopback bind without an API key.
        pipeline: A ready :class:`RetrievalPipeline` to serve instead of building one.
        log_level: uvicorn's log level.

    Raises:
        ConfigError: a non-loopback bind without a key, or a bad config.
        GLRetrievalError: ``port`` is already in use on ``host``.
    """
    uvicorn = require("uvicorn", extra="serve")
    from gl_retrieval.pipeline import RetrievalPipeline
    from gl_retrieval.serve.app import build_app
    from gl_retrieval.serve.service import RetrievalService

    scfg = config.serve or ServeConfig()
    key = api_key_for(scfg)
    check_bind(host, api_key=key, insecure=insecure)
    check_port_free(host, port)  # before the models load: a taken port fails in a second
    if pipeline is None and config.runtime.threads == "auto":
        from gl_retrieval.models.runtimes import serve_threads
        from gl_retrieval.serve.service import embed_workers_for

        workers = embed_workers_for(config)
        threads = serve_threads(batching=scfg.batching, workers=workers)
        config = config.model_copy(
            update={"runtime": config.runtime.model_copy(update={"threads": threads})}
        )
        log.info(
            "runtime.threads auto: %d per model call (batching %s, %d embed workers)",
            threads,
            scfg.batching,
            workers,
        )
    pipe = pipeline if pipeline is not None else RetrievalPipeline(config)
    service = RetrievalService(pipe, scfg).start()
    if not service.ready:
        log.warning("no index is loaded yet (%s); /readyz answers 503", service.last_reload_error)
    app = build_app(service, api_key=key, allowed_hosts=allowed_hosts_for(scfg, host))
    uv_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,  # never log request headers (the API key); /metrics counts requests
        timeout_graceful_shutdown=int(max(1, scfg.drain_timeout_s)),
        lifespan="off",
    )
    server = _server_class(uvicorn)(uv_config)
    server.gl_service = service  # type: ignore[attr-defined]
    return server


def _server_class(uvicorn: Any) -> Any:
    class Server(uvicorn.Server):
        """uvicorn's server, except that a SIGTERM/SIGINT that it drained on is not raised
        again afterwards: a clean drain exits 0."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            sigs = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in sigs}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return Server
