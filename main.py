"""The seed's entry point: ``uvicorn main:app`` or ``python main.py`` serves ./model.pt.

Host and port come from PTSERVE_HOST / PTSERVE_PORT (default 127.0.0.1:8000); every other
setting from its PTSERVE_* variable too.
"""

import os
import sys
from pathlib import Path

from ptserve.app import create_app
from ptserve.server import serve
from ptserve.settings import Settings, unknown_environment

for warning in unknown_environment(os.environ):
    sys.stderr.write(f"ptserve: warning: {warning}\n")
settings = Settings(model_path=Path(__file__).with_name("model.pt"))
app = create_app(settings)

if __name__ == "__main__":
    serve(settings)
