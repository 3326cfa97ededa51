"""modelpool: an LLM model registry and pool manager, run as a localhost sidecar."""

__version__ = "0.1.0"
