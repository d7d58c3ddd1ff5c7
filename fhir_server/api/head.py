"""`HEAD` wherever `GET` works (RFC 9110 §9.3.2; FHIR R4 http.html allows HEAD on reads).

FastAPI routes answer only the methods they declare, so a HEAD would be a 405. This ASGI
middleware runs a HEAD as the GET it mirrors (same status, same headers, Content-Length
included) and sends no body. Everything inside it (authorization, audit, compression)
sees a GET, which a HEAD is: a read.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return  # the body of a HEAD is never sent
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)
