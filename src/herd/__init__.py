"""herd: a local LLM server that speaks Ollama's HTTP API."""

__version__ = "0.33.0"
