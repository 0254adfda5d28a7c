"""FastAPI POST endpoint that returns a constant: the framework's HTTP ceiling.

Run: ``python -m bench.servers.bare_fastapi --port PORT``. The body is read (so the
transfer is paid) but not parsed.
"""

import argparse
import os

import uvicorn
from fastapi import FastAPI, Request

app = FastAPI()

RESPONSE = {"predictions": [[0.0]]}


@app.post("/predict")
async def predict(request: Request) -> dict[str, list[list[float]]]:
    """Drain the body and answer with a constant dict."""
    await request.body()
    return RESPONSE


def main() -> None:
    """Parse argv and serve on 127.0.0.1 under uvicorn."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("BENCH_PORT", "8000")))
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
