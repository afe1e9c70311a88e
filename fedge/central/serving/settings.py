"""What ``fedge serve`` can be told: the served alias, limits, batching and polling."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ServeSettings"]


@dataclass(frozen=True)
class ServeSettings:
    """How the server serves.

    Parameters
    ----------
    alias:
        The alias whose version is served (default ``"production"``).
    models:
        Models loaded at startup, before ``/v2/health/ready`` says ready; ``()`` (default)
        loads every model that has the alias. Other models are loaded on first request.
    max_body_bytes:
        Largest request body accepted (default 8 MiB); larger ones get 413.
    max_request_rows:
        Most examples in one request (default 1024); more get 413.
    max_batch_rows:
        Most rows in one onnxruntime call (default 64).
    max_delay_ms:
        How long the first request of a batch waits for others (default 2 ms).
    poll_seconds:
        How often the aliases are re-read to pick up promotions (default 2 s).
    threads:
        onnxruntime intra-op threads (default 1).
    auth_reads:
        Whether reads (inference, metadata, downloads) need a token too (default
        ``False``: only writes do). Health checks and ``/openapi.json`` stay open.
    body_timeout_seconds:
        How long a request body may take to arrive in full (default 30 s); then 408.
    header_timeout_seconds:
        How long a connection may take to send a request's headers (default 10 s); then
        it is closed, which frees it from a client that never finishes them.
    """

    alias: str = "production"
    models: tuple[str, ...] = ()
    max_body_bytes: int = 8 << 20
    max_request_rows: int = 1024
    max_batch_rows: int = 64
    max_delay_ms: float = 2.0
    poll_seconds: float = 2.0
    threads: int = 1
    auth_reads: bool = False
    body_timeout_seconds: float = 30.0
    header_timeout_seconds: float = 10.0
