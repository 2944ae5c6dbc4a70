"""caas for Python: a pure-Python client (only `httpx`) of caas's HTTP API v1, for notebooks and
scripts. `Client(server, token)`; `upload`, `submit`, `Job.wait`, `Job.logs(follow=True)`,
`Job.results.download(dir)`, `Job.cancel`, `Client.cost`. Errors raise `CaasError` carrying the
server's message."""

from .client import CaasError, Client, Job, Results

__all__ = ["CaasError", "Client", "Job", "Results"]
__version__ = "0.1.0"
