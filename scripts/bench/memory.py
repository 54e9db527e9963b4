"""Scenario 5, memory: the server's RSS with 1,000 concurrent open autocomplete sessions.

The server starts with room for them (`--max-streams 2048 --state-slots 2048`); its RSS is read
from /proc once it has loaded, warmed and answered one completion (the baseline). Then 1,000
sessions open over 4 channels, each sends a 50-character text and waits for its suggestion, and
all stay open while RSS is read again; then they close. A session holds one state slot and,
for every token typed, a snapshot of the state and the next-token logits (so edits restore
instead of recomputing): bytes of recurrent state per session = slot + snapshots.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from clients.calls import NO_RETRIES
from clients.sdk import RecurClient
from scripts.bench import serving
from scripts.bench.common import Context, Result, Target
from scripts.bench.keystrokes import Typist, typed_text
from scripts.bench.models import bench_models, bundle_for, manifest

TARGET_BYTES = 1 << 30
CHANNELS = 4
TEXT_LENGTH = 50
OPENING_AT_ONCE = 100


def state_bytes(bundle: dict[str, Any]) -> tuple[int, int]:
    """Bytes of one slot's recurrent state, and of one typed token's snapshot (state + logits)."""
    slot = 0
    for spec in bundle["state"]:
        count = 1
        for dim in spec["shape"]:
            count *= 1 if dim == "batch" else int(dim)
        slot += 4 * count  # float32
    return slot, slot + 4 * int(bundle["sizes"]["vocab_size"])


async def hold_sessions(target: str, count: int, pid: int) -> dict[str, Any]:
    """Open `count` sessions, each answered once; RSS while all are open, then close them."""
    text = typed_text(TEXT_LENGTH)
    clients = [RecurClient(target, timeout=600.0, retry=NO_RETRIES) for _ in range(CHANNELS)]
    for client in clients:
        await client.__aenter__()
    gate = asyncio.Semaphore(OPENING_AT_ONCE)
    typists: list[Typist] = []

    async def open_one(index: int) -> None:
        async with gate:
            client = clients[index % CHANNELS]
            typist = Typist(client.session(max_tokens=8, open_ended=True))
            await typist.key(text)
            typists.append(typist)

    started = time.perf_counter()
    await asyncio.gather(*(open_one(i) for i in range(count)))
    opened = time.perf_counter() - started
    await asyncio.sleep(1.0)
    rss_open = serving.rss_bytes(pid)
    for typist in typists:
        await typist.session.close()
    for typist in typists:
        async for _ in typist.answers:
            pass
    for client in clients:
        await client.close()
    await asyncio.sleep(1.0)
    return {"open_seconds": opened, "rss_open": rss_open, "rss_closed": serving.rss_bytes(pid)}


async def one_completion(target: str) -> None:
    async with RecurClient(target, timeout=60.0, retry=NO_RETRIES) as client:
        async for _ in client.complete("weather in", max_tokens=8):
            pass


def run(ctx: Context) -> Result:
    models = bench_models(ctx)
    count = 1000
    slot, per_token = state_bytes(manifest(bundle_for(models, "autocomplete")))
    with serving.served(models) as server:
        asyncio.run(one_completion(server.target))
        baseline = serving.rss_bytes(server.pid)
        held = asyncio.run(hold_sessions(server.target, count, server.pid))
    tokens = TEXT_LENGTH + 1  # the text's characters and the beginning-of-sequence token
    per_session = slot + tokens * per_token
    growth = (held["rss_open"] - baseline) / count
    row = {
        "sessions": count,
        "rss_baseline_mib": baseline / 2**20,
        "rss_with_sessions_mib": held["rss_open"] / 2**20,
        "rss_after_close_mib": held["rss_closed"] / 2**20,
        "rss_growth_per_session_kib": growth / 1024,
        "state_slot_bytes": slot,
        "snapshot_bytes_per_token": per_token,
        "state_bytes_per_session": per_session,
        "typed_tokens_per_session": tokens,
        "open_seconds": held["open_seconds"],
    }
    print(
        f"  RSS {row['rss_baseline_mib']:.0f} MiB -> {row['rss_with_sessions_mib']:.0f} MiB with "
        f"{count} sessions ({row['rss_growth_per_session_kib']:.1f} KiB each; recurrent state "
        f"{per_session / 1024:.1f} KiB each); {row['rss_after_close_mib']:.0f} MiB after close",
        flush=True,
    )
    target = Target(
        f"server RSS with {count} open sessions / 1 GiB", "<= 1x",
        held["rss_open"] / TARGET_BYTES, 1.0, higher_is_better=False,
        detail=f"{held['rss_open'] / 2**20:.0f} MiB; recurrent state {per_session:,} bytes per "
        f"session ({slot:,} in its slot, {per_token:,} per typed token kept for edits)",
    )  # fmt: skip
    return Result(
        scenario="memory",
        title="Memory: server RSS with 1,000 concurrent open sessions",
        settings={
            "sessions": count,
            "channels": CHANNELS,
            "text_length": TEXT_LENGTH,
            "server_flags": list(serving.DEFAULT_FLAGS),
        },
        rows=[row],
        targets=[target],
    )


def render(data: dict[str, Any]) -> list[str]:
    from scripts.bench.report import table

    return table(
        data["rows"],
        [("sessions", "open sessions"), ("rss_baseline_mib", "RSS before (MiB)"),
         ("rss_with_sessions_mib", "RSS with sessions (MiB)"),
         ("rss_after_close_mib", "after close (MiB)"),
         ("rss_growth_per_session_kib", "RSS per session (KiB)"),
         ("state_slot_bytes", "state slot (B)"), ("snapshot_bytes_per_token", "per token (B)"),
         ("state_bytes_per_session", "state per session (B)")],
    )  # fmt: skip


def plot(data: dict[str, Any], plt: Any) -> Any:
    row = data["rows"][0]
    figure, axis = plt.subplots(figsize=(6, 4))
    labels = ["before", f"{row['sessions']} sessions open", "after close"]
    values = [row["rss_baseline_mib"], row["rss_with_sessions_mib"], row["rss_after_close_mib"]]
    axis.bar(labels, values, color=["gray", "tab:blue", "lightgray"])
    axis.axhline(1024, color="red", linestyle="--", label="1 GiB target")
    axis.set(ylabel="server RSS (MiB)", title="recur-serve memory")
    axis.legend()
    return figure
