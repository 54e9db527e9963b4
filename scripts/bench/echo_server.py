"""A bare `grpc.aio` AutocompleteService that streams pre-built messages: no model, no engine.

    python -m scripts.bench.echo_server --port 50999 [--packed]

`Complete` streams `max_tokens` token events and a final event, as the real server does, so the
load generator sees the same message sizes; what it measures is the gRPC transport alone. One
token per message by default; `--packed` sends the first token alone and every other one in a
single `tokens` message (what a server whose engine ran ahead of its writes could send at best).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from protos.recur.v1 import inference_pb2 as pb
from protos.recur.v1 import inference_pb2_grpc as pb_grpc


class Echo(pb_grpc.AutocompleteServiceServicer):
    def __init__(self, packed: bool) -> None:
        self.packed = packed

    async def Complete(self, request: pb.CompleteRequest, context: Any) -> AsyncIterator[Any]:
        count = request.max_tokens or 32
        tokens = [pb.GeneratedToken(index=i, id=5, text="a", logprob=-0.5) for i in range(count)]
        if self.packed:
            yield pb.CompleteResponse(token=tokens[0])
            yield pb.CompleteResponse(tokens=pb.GeneratedTokens(tokens=tokens[1:]))
        else:
            for token in tokens:
                yield pb.CompleteResponse(token=token)
        yield pb.CompleteResponse(final=pb.CompleteFinal(completion="a" * count))


async def serve(port: int, packed: bool) -> None:
    server = aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_AutocompleteServiceServicer_to_server(Echo(packed), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--packed", action="store_true",
                        help="every token after the first in one message")  # fmt: skip
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.packed))


if __name__ == "__main__":
    main()
