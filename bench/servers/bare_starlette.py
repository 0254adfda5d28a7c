"""Starlette POST route that returns a constant response: the lowest HTTP ceiling.

Run: ``python -m bench.servers.bare_starlette --port PORT``.
"""

import argparse
import os

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

BODY = b'{"predictions":[[0.0]]}'


async def predict(request: Request) -> Response:
    """Drain the body and answer with constant JSON bytes."""
    await request.body()
    return Response(BODY, media_type="application/json")


app = Starlette(routes=[Route("/predict", predict, methods=["POST"])])


def main() -> None:
    """Parse argv and serve on 127.0.0.1 under uvicorn."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("BENCH_PORT", "8000")))
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
