"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from fedge.config import ExperimentConfig, apply_overrides, parse_config

ROOT = Path(__file__).resolve().parent.parent


def config(
    path: Path, overrides: list[str], *, replace: Iterable[str] = (), drop: Iterable[str] = ()
) -> ExperimentConfig:
    """An example config with ``overrides``; tables in ``replace`` start empty, tables in
    ``drop`` are removed."""
    raw = tomllib.loads(path.read_text())
    for table in replace:
        raw[table] = {}
    for table in drop:
        raw.pop(table, None)
    # Cases run in parallel single-thread processes, with the reference engine.
    settings = [*overrides, "threads=1", 'engine="sequential"']
    return parse_config(apply_overrides(raw, settings), str(path))


def in_parallel(fn: Callable[..., Any], jobs: list[tuple], workers: int) -> Iterator[Any]:
    """Results of ``fn(*job)`` for each job, as they finish, in ``workers`` fresh processes
    (one torch thread each: on a 2-core machine two single-threaded processes outrun one
    process with two threads)."""
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
        for future in as_completed(futures):
            yield future.result()
