"""Which web pages may use the browser API: the registered clients' ``web_origins`` and the issuer's own.

Every login belongs to a client (``shared.clients``). A page may ask for a code or collect a login for
client X only from one of X's web origins; the issuer's own origin (the hosted login page of
``/oidc/authorize``) may do so for every client. CORS and the WebSocket, which do not know the client
yet (the ticket binds the scene), allow the origins of every client. ``*`` in
``WXLOGIN_ALLOWED_ORIGINS`` (development only) lets any page use the default client.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from shared.clients import Client, ClientRegistry


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of an absolute URL, as a browser serialises its Origin."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


class Origins:
    """The origin rules of one gateway, read from the (live) client registry at every request."""

    def __init__(self, registry: ClientRegistry, *, issuer: str, allowed: list[str]) -> None:
        self.registry = registry
        self.issuer_origin = origin_of(issuer)
        self.any_for_default = "*" in allowed

    def all(self) -> list[str]:
        """Every origin that may use the browser API for some client (CORS, the WebSocket)."""
        origins = [*self.registry.origins(), self.issuer_origin]
        return [*origins, "*"] if self.any_for_default else origins

    def allows_for(self, client: Client, origin: str) -> bool:
        """Whether a page at ``origin`` may ask for codes and collect logins of ``client``."""
        if origin == self.issuer_origin or client.allows_origin(origin):
            return True
        return self.any_for_default and client.client_id == self.registry.default.client_id
