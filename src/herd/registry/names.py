"""Ollama model names (spec section 6): `[scheme://][host/][namespace/]model[:tag]`.

Matches Ollama's `types/model/name.go`: the name is cut right to left (tag, model, namespace, host), missing parts
take the defaults, and every part is checked against the same character rules. A part that is *present but empty*
(`llama3:`, `/llama3`, `a//b`) is invalid rather than defaulted, as in Ollama.

Names become directories of the manifest store, so the character rules double as a path-safety check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import PurePosixPath

from herd.errors import InvalidRequest

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_DIGEST_RE = re.compile(r"^sha256[:-]([0-9a-fA-F]{64})$")


class InvalidName(InvalidRequest):
    """The text is not a valid model name (400 `invalid model name`)."""

    def __init__(self, message: str = "invalid model name") -> None:
        super().__init__(message)


class _Part(Enum):
    HOST = "host"
    NAMESPACE = "namespace"
    MODEL = "model"
    TAG = "tag"


# First character, then the rest. `.` is allowed except in a namespace and `:` only in a host (for a port),
# exactly Ollama's isValidPart. Neither class contains `/`, so no part can be a path separator or `..`.
_FIRST = r"[A-Za-z0-9_]"
_PART_RE: dict[_Part, re.Pattern[str]] = {
    _Part.HOST: re.compile(_FIRST + r"[A-Za-z0-9_.:-]{0,349}"),
    _Part.NAMESPACE: re.compile(_FIRST + r"[A-Za-z0-9_-]{0,79}"),
    _Part.MODEL: re.compile(_FIRST + r"[A-Za-z0-9_.-]{0,79}"),
    _Part.TAG: re.compile(_FIRST + r"[A-Za-z0-9_.-]{0,79}"),
}


def _is_valid_part(kind: _Part, text: str) -> bool:
    # fullmatch on str also rejects a trailing "\n", which `$` would let through.
    return _PART_RE[kind].fullmatch(text) is not None


@dataclass(frozen=True)
class ModelName:
    """A fully qualified, validated model name. Build it with `parse()`.

    Equality is exact (stored casing); use `key` for Ollama's case-insensitive comparison.
    `scheme` (e.g. "http" from `http://host/ns/model`) is remembered for pulls but is not part of the identity.
    """

    host: str
    namespace: str
    model: str
    tag: str
    scheme: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for kind, value in (
            (_Part.HOST, self.host),
            (_Part.NAMESPACE, self.namespace),
            (_Part.MODEL, self.model),
            (_Part.TAG, self.tag),
        ):
            if not _is_valid_part(kind, value):
                raise InvalidName()

    @classmethod
    def parse(cls, text: str) -> ModelName:
        return parse(text)

    @property
    def display(self) -> str:
        """Shortest form, Ollama's DisplayShortest: default host and namespace dropped, tag always kept."""
        if self.host.lower() != DEFAULT_HOST:
            prefix = f"{self.host}/{self.namespace}/"
        elif self.namespace.lower() != DEFAULT_NAMESPACE:
            prefix = f"{self.namespace}/"
        else:
            prefix = ""
        return f"{prefix}{self.model}:{self.tag}"

    @property
    def fully_qualified(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def key(self) -> str:
        """Lower-cased fully qualified name: Ollama compares names case-insensitively."""
        return self.fully_qualified.lower()

    @property
    def manifest_relpath(self) -> PurePosixPath:
        """`host/namespace/model/tag`, relative to `<models>/manifests`, in the stored casing (as Ollama)."""
        parts = (self.host, self.namespace, self.model, self.tag)
        # The character rules already exclude "/" and a leading "."; this is the last line of defence
        # before the parts become directory names, so check it again without relying on them.
        for part in parts:
            if not part or "/" in part or "\\" in part or part in (".", "..") or "\x00" in part:
                raise InvalidName()
        return PurePosixPath(*parts)

    def __str__(self) -> str:
        return self.display


def parse(text: str) -> ModelName:
    """Parse a model name, filling defaults; raise `InvalidName` if any part is invalid."""
    host: str | None = None
    namespace: str | None = None
    scheme = ""
    rest = text

    # "/" is not allowed in a tag, so a ":" after the last "/" starts the tag; one before it is a host port.
    tag: str | None = None
    if rest.rfind(":") > rest.rfind("/"):
        rest, tag = rest.rsplit(":", 1)

    if "/" in rest:
        rest, model = rest.rsplit("/", 1)
        if "/" in rest:
            rest, namespace = rest.rsplit("/", 1)
            scheme_part, sep, host_part = rest.partition("://")
            if sep:
                scheme, host = scheme_part, host_part
            else:
                host = rest
        else:
            namespace = rest
    else:
        model = rest

    return ModelName(
        host=DEFAULT_HOST if host is None else host,
        namespace=DEFAULT_NAMESPACE if namespace is None else namespace,
        model=model,
        tag=DEFAULT_TAG if tag is None else tag,
        scheme=scheme,
    )


def is_valid_name(text: str) -> bool:
    try:
        parse(text)
    except InvalidName:
        return False
    return True


def is_valid_digest(digest: str) -> bool:
    """`sha256:<64 hex>` or `sha256-<64 hex>`, the only digests Ollama accepts (spec 5.9)."""
    return _DIGEST_RE.fullmatch(digest) is not None


def blob_filename(digest: str) -> str:
    """The blob's file name in `<models>/blobs`: `sha256-<hex>`. Anything else is refused, since it becomes a path."""
    match = _DIGEST_RE.fullmatch(digest)
    if match is None:
        raise InvalidRequest("invalid digest format")
    return f"sha256-{match.group(1)}"
