"""A client in another language that knows only the .proto files: `clients/node/stream.js`
(Node.js, @grpc/grpc-js and @grpc/proto-loader reading protos/recur/v1/inference.proto at run
time, no generated code) against a real recur-serve. It must read packed messages (a `tokens`
event holding several tokens) as the proto documents them, and get the same tokens and final
answers as the Python SDK."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from clients.sdk import RecurClient

REPO = Path(__file__).resolve().parents[2]
NODE_CLIENT = REPO / "clients" / "node"
NO_REGISTRY = ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ETIMEDOUT", "ECONNRESET")  # npm's codes

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="Node.js and npm are not installed (Debian: apt-get install nodejs npm)",
)


@pytest.fixture(scope="module")
def node_client() -> Path:
    """clients/node with its pinned packages installed (`npm ci`, once)."""
    if not (NODE_CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        done = subprocess.run(
            ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
            cwd=NODE_CLIENT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        output = done.stdout + done.stderr
        if done.returncode and any(code in output for code in NO_REGISTRY):
            pytest.skip(f"npm ci could not reach the npm registry:\n{output[-2000:]}")
        assert done.returncode == 0, f"npm ci failed:\n{output}"
    return NODE_CLIENT / "stream.js"


def node(script: Path, target: str, method: str, request: dict[str, Any]) -> tuple[int, list[Any]]:
    """Runs the Node client; its exit code and the JSON line it printed for each message."""
    done = subprocess.run(
        ["node", str(script), target, method, json.dumps(request)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert not done.stderr, done.stderr
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines()]


def sdk_events(target: str, method: str, request: dict[str, Any]) -> list[Any]:
    """The Python SDK's events for the same request (one per token, then the final)."""

    async def run() -> list[Any]:
        async with RecurClient(target) as client:
            if method == "Complete":
                stream = client.complete(request["text"], max_tokens=request["max_tokens"])
            else:
                stream = client.sentiment(request["text"])
            return [event async for event in stream]

    return asyncio.run(run())


@pytest.mark.parametrize(
    ("method", "request_", "kind"),
    [
        ("Complete", {"text": "the", "max_tokens": 9, "stream_interval": 4}, "completion"),
        ("Analyze", {"text": "a fine and moving film , truly", "stream_interval": 3}, "sentiment"),
    ],
)
def test_a_proto_only_client_reads_packed_messages_as_the_sdk_reads_tokens(
    node_client: Path, served: Any, method: str, request_: dict[str, Any], kind: str
) -> None:
    code, messages = node(node_client, served.target, method, request_)
    assert code == 0, messages
    *tokens_messages, final = messages
    assert final["event"] == "final"
    sizes = [1 if m["event"] == "token" else len(m["tokens"]["tokens"]) for m in tokens_messages]
    assert sizes and sizes[0] == 1, "the first token goes out alone"
    assert all(size >= request_["stream_interval"] for size in sizes[1:-1]), sizes
    if kind == "sentiment":  # a running label per word: enough to pack, whatever the weights
        assert sum(sizes) > request_["stream_interval"], sizes
    if sum(sizes) > request_["stream_interval"]:  # (a completion may end early at its EOS)
        assert any(m["event"] == "tokens" for m in tokens_messages), f"none packed: {sizes}"
    from_node = [
        item
        for m in tokens_messages
        for item in ([m["token"]] if m["event"] == "token" else m["tokens"]["tokens"])
    ]
    expected = sdk_events(served.target, method, request_)
    *sdk_tokens, sdk_final = expected
    assert [(t["index"], t["id"], t["text"]) for t in from_node] == [
        (e.token.index, e.token.id, e.token.text) for e in sdk_tokens
    ]
    if kind == "completion":
        assert final["final"]["completion"] == sdk_final.final.completion
        assert final["final"]["completion"] == "".join(t["text"] for t in from_node)
    else:
        assert final["final"]["label"] == sdk_final.final.label
        assert [t["label"] for t in from_node] == [e.token.label for e in sdk_tokens]


def test_a_proto_only_client_gets_the_status_code_and_details(
    node_client: Path, served: Any
) -> None:
    code, messages = node(node_client, served.target, "Complete", {"text": "x", "model": "nope"})
    assert code == 1
    assert messages[-1]["error"] == "NOT_FOUND"
    assert "nope" in messages[-1]["details"]
