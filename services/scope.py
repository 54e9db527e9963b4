"""The tasks a call started, cancelled when the call ends, however it ends.

gRPC stops driving a streaming handler that was cancelled (client gone, deadline) while it was
suspended at a `yield`; the handler's generators are then closed only when garbage collection
gets to them. A stream's decoding task (see `runtime.pump`) holds state slots, so it must not
wait for that: it joins its call's scope, and the interceptor cancels the scope's tasks from the
call's done callback.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from typing import Any

_TASKS: ContextVar[set[asyncio.Task[Any]] | None] = ContextVar("recur_call_tasks", default=None)


def open_scope() -> set[asyncio.Task[Any]]:
    """Start collecting the tasks of the current call."""
    tasks: set[asyncio.Task[Any]] = set()
    _TASKS.set(tasks)
    return tasks


def adopt(task: asyncio.Task[Any]) -> None:
    """Tie `task` to the current call (no-op outside a call)."""
    tasks = _TASKS.get()
    if tasks is not None:
        tasks.add(task)
        task.add_done_callback(tasks.discard)


def cancel(tasks: set[asyncio.Task[Any]]) -> None:
    for task in list(tasks):
        task.cancel()
