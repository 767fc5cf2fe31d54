"""Guards in front of every route: a request-body cap, JSON-only writes from the page's own origin, safe names."""
from __future__ import annotations

import re
from pathlib import Path

from fastapi import HTTPException

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(name: str, what: str = "graph name") -> str:
    """A file stem the server may use: letters, digits, '.', '_', '-'; no slashes, no '..', at most 128 chars."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or ".." in name:
        raise HTTPException(400, f"{what} '{str(name)[:80]}' is not allowed: use letters, digits, '.', '_' and '-' "
                                 f"(no slashes, no '..', at most 128 characters)")
    return name


def within(roots, path: Path) -> bool:
    """Whether `path`, resolved (symlinks and '..' included), is one of `roots` or inside one."""
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError, ValueError):  # ValueError: a NUL byte in the path
        return False
    return any(resolved == r or r in resolved.parents for r in (Path(x).resolve() for x in roots))


def inside(root: Path, path: Path) -> Path:
    """`path` resolved, or a 400 when it leaves `root` (symlinks and '..' included)."""
    if not within([root], path):
        raise HTTPException(400, "path leaves the served folder")
    return Path(path).resolve()


class Guard:
    """ASGI middleware: refuse bodies over `max_body` bytes (413), writes that are not JSON (415), writes from another
    origin (403: an Origin whose host:port is not the Host header), and Host headers that are not this server's name
    (421: DNS-rebinding), before any route runs."""

    def __init__(self, app, max_body: int, upload_body: int, hosts: set[str]):
        self.app, self.max_body, self.upload_body, self.hosts = app, max_body, upload_body, hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "").rsplit(":", 1)[0].strip("[]")
        if self.hosts and host not in self.hosts:
            return await _answer(send, 421, f"host '{host}' is not served here")
        limit = self.upload_body if scope["path"] == "/api/graphs/upload" else self.max_body
        if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            ctype = headers.get("content-type", "").split(";")[0].strip()
            if ctype != "application/json":
                return await _answer(send, 415, f"send JSON (Content-Type: application/json), not '{ctype}'")
            origin = headers.get("origin")
            if origin and origin.split("://", 1)[-1].rstrip("/") != headers.get("host", ""):  # host and port
                return await _answer(send, 403, f"cross-origin request from {origin[:200]} refused")
        size = headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > limit):
            return await _answer(send, 413, f"request body over {limit} bytes")
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge()
            return message
        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await _answer(send, 413, f"request body over {limit} bytes")


class _TooLarge(Exception):
    pass


async def _answer(send, status: int, detail: str) -> None:
    import json
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
