"""ptserve: serve a saved PyTorch model behind a fast, safe FastAPI microservice."""

__version__ = "0.1.0"
