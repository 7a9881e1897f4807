"""Typed errors raised by the services. `api/errors.py` maps each class to a status code, in one place.

Messages are the texts Ollama sends (spec section 4), so the HTTP layer never rewrites them.
"""

from __future__ import annotations


class HerdError(Exception):
    """Base of every error a request can end with."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(HerdError):
    """The request is malformed or asks for something impossible (400)."""


class ModelNotFound(HerdError):
    """No such model in the store (404)."""


class ResponseNotFound(HerdError):
    """`previous_response_id` (or `GET /v1/responses/{id}`) names a response that is not kept: never stored
    (`store: false`), expired, evicted, or unknown (404)."""

    def __init__(self, response_id: str) -> None:
        super().__init__(f"Previous response with id '{response_id}' not found.")
        self.response_id = response_id


class CapabilityMissing(InvalidRequest):
    """The model lacks tools, thinking, vision, insert, ... (400)."""


class PromptTooLong(InvalidRequest):
    """truncate:false and the prompt does not fit num_ctx (400)."""


class EmptyPrompt(InvalidRequest):
    """The rendered prompt is zero tokens (a template that renders nothing, on a model that adds no BOS): there is
    nothing to decode from, so it is refused before a runner slot is taken (400)."""

    def __init__(self, message: str = "prompt is empty") -> None:
        super().__init__(message)


class UnsafePath(InvalidRequest):
    """/api/create named a file outside the model store (400): only uploaded blobs and the store's own files may be
    read, so no request can make the server read, or push out, another file."""


class NotImplementedFeature(InvalidRequest):
    """The request asks for something herd cannot honour yet (a Modelfile RENDERER or PARSER it does not know, a
    vision projector it cannot run): refused with a 400 naming it rather than silently answered without it."""


class LimitExceeded(InvalidRequest):
    """The request is past one of the server's resource bounds (Settings.max_*): too many messages, images or tools,
    an image, a body or an option value too large (400, never an out-of-memory server)."""


class InvalidFormat(HerdError):
    """`format` is neither "json" nor a JSON-schema object. Ollama answers 500 before output."""


class ServerBusy(HerdError):
    """The scheduler's pending queue is full (503)."""


class RequestCancelled(HerdError):
    """The client went away while waiting (499)."""


class RunnerFailed(HerdError):
    """The model runner process died or failed to load the model (500)."""


class RpcWorkerFailed(RunnerFailed):
    """A llama.cpp RPC worker (HERD_RPC_SERVERS) that a model's layers need refuses connections, fails its
    handshake, or died under a running model (502: the upstream this server depends on failed). The message
    names the worker as host:port."""


class RpcWorkerTimeout(RpcWorkerFailed):
    """An RPC worker did not answer in time: its handshake before a load (it serves one client at a time, so it
    may be busy with another, or it is frozen) or a decode step through it (HERD_RPC_TIMEOUT) (504)."""


class ShuttingDown(HerdError):
    """The server is stopping and takes no new work (503)."""


RUNNER_STOPPED = (
    "model runner has unexpectedly stopped, this may be due to resource limitations or an internal error, "
    "check ollama server logs for details"
)


class BlobNotFound(HerdError):
    """`HEAD /api/blobs/<digest>` for a blob the store lacks (404 `blob "sha256:..." not found`)."""


class DigestMismatch(InvalidRequest):
    """Uploaded bytes do not hash to the digest in the URL (400, spec 5.9)."""


class RegistryError(HerdError):
    """A pull or push failed at the remote registry or in transfer. Ollama answers 500 when stream is false."""


class StorageFailed(HerdError):
    """The model store could not be written (disk full, permissions): a server-side failure (500)."""
