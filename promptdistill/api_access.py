"""Where a teacher's API key may go: the rules both HTTP backends (vllm-server, chat) follow.

A task file may come from someone else, so it must not be able to send the
user's key anywhere the user did not mean: the key is read from the
environment only (`PROMPTDISTILL_API_KEY`, or the variable the task names in
`models.teacher_api_key_env`; never `$OPENAI_API_KEY` unless named), it goes
only to `models.teacher_url` (never across a redirect: the backends refuse
redirects), never over plain http:// to another machine unless
`models.teacher_allow_insecure_http` says so, and never into a file, a log or
an error message (`redact`). Credentials written into the URL itself
(`user:pass@`, `?api_key=`) are refused: the URL is recorded in the labels
sidecar and printed, and a key there would be written with it.

This module is in the ground layer (config.py checks URLs when it reads a task
file; the backends check the key before their first request).
"""

from __future__ import annotations

import ipaddress
import os
import urllib.parse

from .errors import PromptDistillError

KEY_VARIABLE = "PROMPTDISTILL_API_KEY"
# Query parameters that carry credentials in the APIs people point at.
SECRET_QUERY_KEYS = frozenset({"key", "api_key", "apikey", "api-key", "token", "access_token", "auth", "password", "secret"})
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def check_url(url: str, source=None, field: str = "models.teacher_url") -> None:
    """An http(s) URL with a host and no credentials in it."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PromptDistillError(f"expected an http:// or https:// URL, got {redact_url(url)!r}", path=source, field=field)
    if parts.username is not None or parts.password is not None:
        raise PromptDistillError(f"the URL holds credentials (user:password@); put the key in ${KEY_VARIABLE} instead",
                                 path=source, field=field)
    secret = [k for k, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True) if k.lower() in SECRET_QUERY_KEYS]
    if secret:
        raise PromptDistillError(f"the URL holds a credential in its query ({secret[0]}=...); put the key in ${KEY_VARIABLE} instead",
                                 path=source, field=field)


def is_loopback(url: str) -> bool:
    """Whether the URL's host is this machine (a name for it or a loopback address)."""
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_key(models, variables: tuple[str, ...] | None = None) -> str | None:
    """The key for the teacher's API: $PROMPTDISTILL_API_KEY, else the variable
    `models.teacher_api_key_env` names; None when neither is set. With `variables`,
    only those are read (a student's API gets the key its own variable holds, never the teacher's)."""
    for name in variables if variables is not None else (KEY_VARIABLE, getattr(models, "teacher_api_key_env", None)):
        if name and os.environ.get(name):
            return os.environ[name]
    return None


def check_key_transport(url: str, key: str | None, allow_insecure_http: bool, field: str = "models.teacher_url") -> None:
    """Refuse to send a key over plain http:// to another machine (anyone on the
    way reads it), unless the task allows it; called before the first request."""
    if key and urllib.parse.urlsplit(url).scheme == "http" and not is_loopback(url) and not allow_insecure_http:
        allow = (", or set models.teacher_allow_insecure_http = true (--allow-insecure-http) if the network is yours"
                 if field == "models.teacher_url" else "")
        raise PromptDistillError(f"will not send the API key over plain http:// to {redact_url(url)}; use https://{allow}", field=field)


def redact(text: str, key: str | None) -> str:
    """`text` with the key (if any) replaced, for anything printed, logged or raised."""
    return text.replace(key, "[key]") if key else text


def redact_url(url: str) -> str:
    """The URL without user info or secret query values, for messages about a URL that was refused."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    query = urllib.parse.urlencode([(k, "..." if k.lower() in SECRET_QUERY_KEYS else v)
                                    for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)])
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))
