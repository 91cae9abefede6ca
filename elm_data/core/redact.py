"""Secrets never leave in a URI: one function strips credentials from every URI recorded or printed.

``redact_uri`` removes the userinfo (``s3://KEY:SECRET@bucket/…``, ``https://user:pass@host/…``) and the
query parameters known to carry secrets (pre-signed URL signatures, tokens, API keys). Apply it wherever a
URI is written (manifest.json, shards.parquet, Croissant, workspace error files, dropped samples, logs) or
printed; ``redact_text`` does the same for every URI inside a free-form message. The manifest id never
covers URIs, so it does not depend on credentials either.

Reading still uses the URI as given; a manifest records the redacted one, so a consumer that reads the
shards again (the stream, ``verify``) needs the credentials from the environment (fsspec/boto/hub config).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# Query parameters (compared lower-case) that hold credentials in S3/GCS/Azure/OSS pre-signed URLs and APIs.
SECRET_PARAMS = frozenset(
    {
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "awsaccesskeyid",
        "signature",
        "x-goog-signature",
        "x-goog-credential",
        "googleaccessid",
        "x-oss-signature",
        "ossaccesskeyid",
        "sig",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "auth",
        "authorization",
        "api_key",
        "apikey",
        "key",
        "secret",
        "client_secret",
        "password",
        "passwd",
    }
)

_URI = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s'\"<>`]+")


def redact_uri(uri: str) -> str:
    """``uri`` without userinfo and secret query parameters; anything else (local paths too) unchanged."""
    if "://" not in uri:
        return uri
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    netloc = parts.netloc.rpartition("@")[2]
    query = parts.query
    if query:
        kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k.lower() not in SECRET_PARAMS]
        if len(kept) != len(parse_qsl(query, keep_blank_values=True)):
            query = urlencode(kept)
    if netloc == parts.netloc and query == parts.query:
        return uri
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """``text`` with every URI in it redacted (for error messages, logs and stderr)."""
    return _URI.sub(lambda m: redact_uri(m.group(0)), text) if "://" in text else text
