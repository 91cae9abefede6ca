"""Secrets never leave in a URI: one function strips credentials from every URI recorded or printed.

``redact_uri`` removes the userinfo (``s3://KEY:SECRET@bucket/…``, ``https://user:pass@host/…``, also when the
secret holds a ``/``, which ends ``urlsplit``'s netloc early), the fragment, and every query parameter whose
name is not on the allow-list :data:`HARMLESS_PARAMS` (an allow-list, not a deny-list: a token under a name
nobody foresaw is removed too). Apply it wherever a URI is written (manifest.json, shards.parquet, Croissant,
workspace error files, dropped samples, logs, locks) or printed; ``redact_text`` does the same for every URI
inside a free-form message, and also removes every credential it has seen in a URI from the text, so a
library that echoes one without its scheme (``got 'user:TOKPASS12'``) does not leak it. The manifest id never
covers URIs, so it does not depend on credentials either.

Reading still uses the URI as given; a manifest records the redacted one, so a consumer that reads the
shards again (the stream, ``verify``) needs the credentials from the environment (fsspec/boto/hub config).
"""

from __future__ import annotations

import re
import threading
from urllib.parse import parse_qsl, quote, unquote, urlencode

# Query parameters (compared lower-case) kept in a redacted URI: each names which content or which version of
# it is read, never who reads it, so a location stays readable and distinct without a credential.
HARMLESS_PARAMS = frozenset(
    {
        "revision",  # a hub commit or tag (huggingface_hub's revision)
        "ref",  # a git ref (GitHub/GitLab raw and archive URLs)
        "branch",  # a git branch name
        "tag",  # a git tag
        "version",  # a dataset or API version number
        "versionid",  # an S3 object version (public in the bucket listing)
        "generation",  # a GCS object generation (its version number)
        "split",  # a dataset split name (train/validation)
        "format",  # a representation (parquet/json)
        "part",  # which part of a multi-part file
        "alt",  # GCS JSON API `alt=media`: the object's bytes rather than its metadata
        "download",  # `download=true`: ask for the file rather than a web page
        "raw",  # `raw=true`: the file's bytes rather than a rendered page
    }
)
REDACTED = "REDACTED"
MIN_SECRET_CHARS = 6  # a shorter credential is not searched for in free text ("main" would garble "remains")

_URI = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s'\"<>`]+")
# The credentials redact_uri removed in this process, for redact_text: the latest SEEN_MAX (a presigned URL
# per shard brings a new signature each; older ones are forgotten so that redact_text stays cheap).
SEEN_MAX = 1024
_SEEN: dict[str, None] = {}
_LONGEST_FIRST: list[str] = []  # _SEEN sorted by length, the longest first ("user:pass" before "pass")
_SEEN_LOCK = threading.Lock()


def _split_userinfo(rest: str) -> tuple[str, str]:
    """``(userinfo, host and path)`` of what follows ``scheme://`` (query and fragment cut off already).

    The userinfo ends at the last ``@`` of the authority (up to the first ``/``); when there is none there,
    ``KEY:SE/CRET@bucket/...`` still has userinfo: an ``@`` after a ``user:`` whose user holds no ``/``
    (``bucket/a:b@c``, ``org/name@rev`` and ``host:8443/x@y`` are paths).
    """
    authority = rest.partition("/")[0]
    if "@" in authority:
        userinfo, _, host = rest.partition("/")[0].rpartition("@")
        return userinfo, host + rest[len(authority) :]
    user, colon, after_colon = rest.partition(":")
    port = after_colon.partition("/")[0].isdigit()  # host:8443/path@x is a port, then a path
    nested = after_colon.startswith("//")  # a URL inside the path (http://http://h/…): no userinfo here
    if colon and not port and not nested and "/" not in user.lstrip("/") and "@" in rest:
        userinfo, _, after = rest.partition("@")
        return userinfo, after
    return "", rest


def _remember(*secrets: str) -> None:
    forms = (form for secret in secrets for form in (secret, unquote(secret), quote(secret, safe="")))
    found = {form for form in forms if len(form) >= MIN_SECRET_CHARS}
    if found - _SEEN.keys():
        with _SEEN_LOCK:
            _SEEN.update(dict.fromkeys(found))
            while len(_SEEN) > SEEN_MAX:
                del _SEEN[next(iter(_SEEN))]
            _LONGEST_FIRST[:] = sorted(_SEEN, key=len, reverse=True)


def _query(query: str) -> str:
    """Only the allow-listed parameters of ``query``; the others' names and values are remembered as
    secrets."""
    pairs = parse_qsl(query, keep_blank_values=True)
    kept = [(k, v) for k, v in pairs if k.lower() in HARMLESS_PARAMS]
    _remember(*(x for k, v in pairs if k.lower() not in HARMLESS_PARAMS for x in (v, f"{k}={v}")))
    if not pairs:  # no name=value structure at all: the whole query may be a token
        _remember(query)
    return urlencode(kept)


def redact_uri(uri: str) -> str:
    """``uri`` without userinfo, fragment and non-allow-listed query parameters; local paths unchanged (also
    ``file://`` and ``local://`` ones, whose ``?`` and ``#`` are parts of a file name); each link of a chained
    URL (``simplecache::s3://…``) redacted on its own."""
    if "::" in uri:
        return "::".join(redact_uri(part) for part in uri.split("::"))
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    local = scheme.lower() in ("file", "local")
    rest, hashmark, fragment = (rest, "", "") if local else rest.partition("#")
    rest, qmark, query = (rest, "", "") if local else rest.partition("?")
    userinfo, location = _split_userinfo(rest)
    if userinfo:
        _remember(userinfo, *userinfo.split(":", 1))
    if fragment:
        _remember(fragment, *(v for _, v in parse_qsl(fragment, keep_blank_values=True)))
    kept = _query(query) if qmark else ""
    if not userinfo and not hashmark and kept == query:
        return uri
    return f"{scheme}://{location}" + (f"?{kept}" if kept else "")


def redact_text(text: str, *uris: str) -> str:
    """``text`` with every URI in it redacted, and every credential seen in a URI (those of ``uris`` too)
    replaced by ``REDACTED`` wherever it appears (for error messages, logs and stderr)."""
    for uri in uris:
        redact_uri(uri)
    if "://" in text:
        text = _URI.sub(lambda m: redact_uri(m.group(0)), text)
    with _SEEN_LOCK:
        seen = list(_LONGEST_FIRST)
    for secret in seen:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text
