"""``hallo2rt serve``: the model as a service on Ray Serve (docs/serving.md)."""

from .client import Client, ServerError

__all__ = ["Client", "ServerError"]
