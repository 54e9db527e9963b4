"""A bare `grpc.aio` AutocompleteService that streams pre-built messages: no model, no engine.

    python -m scripts.bench.echo_server --port 50999

`Complete` streams `max_tokens` token events and a final event, as the real server does, so the
load generator sees the same message sizes; what it measures is the gRPC transport alone.
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
    async def Complete(self, request: pb.CompleteRequest, context: Any) -> AsyncIterator[Any]:
        for index in range(request.max_tokens or 32):
            token = pb.GeneratedToken(index=index, id=5, text="a", logprob=-0.5)
            yield pb.CompleteResponse(token=token)
        yield pb.CompleteResponse(final=pb.CompleteFinal(completion="a" * 32))


async def serve(port: int) -> None:
    server = aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_AutocompleteServiceServicer_to_server(Echo(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
