# syntax=docker/dockerfile:1
# ptserve on CPU: a slim, non-root image that serves the bundled digits model by default.
#
#   docker build -t ptserve:0.1.0 .
#   docker run --rm -p 8000:8000 --cpus 2 -e PTSERVE_TORCH_THREADS=2 ptserve:0.1.0
#   docker run --rm -p 8000:8000 -v "$PWD/models:/models:ro" ptserve:0.1.0 serve /models/model.pt
#
# See docs/deploy.md. Build and run it where a Docker engine is available; it was not built
# where it was written.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: install everything into a virtual environment that the runtime stage copies ------
FROM ${PYTHON_IMAGE} AS build
# pip compiles the bytecode here, once, so no container start pays for it (the runtime stage
# then writes none: PYTHONDONTWRITEBYTECODE, and a read-only root filesystem in Kubernetes).
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# torch comes from the PyTorch CPU index: the PyPI wheel for Linux pulls in the CUDA libraries
# (gigabytes). The version is the pin in requirements.txt, so there is one place to change it;
# `torch==X` there is satisfied by the installed `X+cpu` wheel, so the second step keeps it.
COPY requirements.txt ./
RUN torch_pin="$(grep -E '^torch==' requirements.txt)" \
    && test -n "$torch_pin" \
    && pip install --index-url https://download.pytorch.org/whl/cpu "$torch_pin" \
    && pip install -r requirements.txt

COPY pyproject.toml README.md ./
COPY ptserve ./ptserve
# with the grpc extra: PTSERVE_GRPC_PORT / --grpc-port (the Kubernetes manifests turn it on)
RUN pip install '.[grpc]' \
    && python -c "import torch; assert not torch.version.cuda, torch.version.cuda"

# ---- runtime: the interpreter, the virtual environment, and nothing else --------------------
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PTSERVE_HOST=0.0.0.0 \
    PTSERVE_PORT=8000 \
    PTSERVE_WORKERS=1

# A numeric UID, so Kubernetes can verify runAsNonRoot; /models is where volumes go.
RUN groupadd --system --gid 10001 ptserve \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/ptserve --create-home \
        --shell /usr/sbin/nologin ptserve \
    && mkdir /models && chown 10001:10001 /models
COPY --from=build /opt/venv /opt/venv

USER 10001:10001
WORKDIR /home/ptserve
EXPOSE 8000

# Ready = model loaded and warm, and not draining. No curl in slim images: Python's urllib.
# urlopen raises on 503 and on a refused connection, so the exit status is 1 then.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('PTSERVE_PORT', '8000'), timeout=3)"]

# `docker run IMAGE` serves the bundled example; `docker run IMAGE serve /models/model.pt`
# serves a mounted model; `docker run IMAGE info /models/model.pt` describes one.
ENTRYPOINT ["ptserve"]
CMD ["serve"]
