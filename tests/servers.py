"""Run ASGI apps under real uvicorn on loopback, in a background thread, for tests."""

from deploy.inprocess import serve_in_thread as serve

__all__ = ["serve"]
