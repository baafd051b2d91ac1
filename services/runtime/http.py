"""What every HTTP endpoint of ours shares that is not a route: reading a body within a bound."""

from starlette.requests import Request


async def bounded_body(request: Request, bytes_max: int) -> bytes | None:
    """The request's body, or None once it is longer than `bytes_max`: a declared length over the
    bound is refused before reading, and a body is never held past the bound while it streams in."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > bytes_max:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > bytes_max:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
