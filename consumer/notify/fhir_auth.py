"""How the FHIR receiver proves who it is: a bearer token from a file, or SMART Backend Services.

SMART Backend Services (OAuth 2.0 client credentials with a signed JWT, the SMART App Launch
specification's "backend services" profile): the service signs a short assertion with its
private key (`iss` = `sub` = the client id, `aud` the token endpoint, `exp` within five minutes,
a fresh `jti`), posts it to the token endpoint with `grant_type=client_credentials` and the
scopes it needs, and uses the access token until shortly before it expires, or until the FHIR
server refuses it (401), when it asks again.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import jwt

from consumer.notify.sending import Transient, Undelivered

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_S = 240
EARLY_S = 30  # a token is renewed this long before it expires


class TokenSource:
    def bearer(self) -> str:
        """The access token to send now; Transient when it cannot be had yet."""
        raise NotImplementedError

    def refused(self) -> None:
        """The FHIR server refused the token: the next `bearer` asks for a new one."""


@dataclass
class TokenFile(TokenSource):
    """A token someone else keeps current in a file (a mounted secret, re-read each time)."""

    path: Path

    def bearer(self) -> str:
        try:
            return self.path.read_text().strip()
        except OSError as err:
            raise Transient(None, f"the token file cannot be read ({type(err).__name__})") from err


@dataclass
class BackendServices(TokenSource):
    token_url: str
    client_id: str
    private_key_pem: bytes = field(repr=False)
    key_id: str
    scope: str
    algorithm: str = "RS384"
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10))
    clock: Callable[[], float] = time.time
    _token: str | None = field(default=None, repr=False)
    _until: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def bearer(self) -> str:
        with self._lock:
            if self._token is None or self.clock() >= self._until:
                self._token, self._until = self._ask()
            return self._token

    def refused(self) -> None:
        with self._lock:
            self._token = None

    def assertion(self) -> str:
        now = int(self.clock())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.token_url,
            "exp": now + ASSERTION_LIFETIME_S,
            "iat": now,
            "jti": uuid.uuid4().hex,
        }
        headers = {"kid": self.key_id, "typ": "JWT"}
        return jwt.encode(claims, self.private_key_pem, algorithm=self.algorithm, headers=headers)

    def _ask(self) -> tuple[str, float]:
        form = {
            "grant_type": "client_credentials",
            "scope": self.scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.assertion(),
        }
        try:
            answer = self.client.post(self.token_url, data=form, headers={"Accept": "application/json"})
        except httpx.TransportError as err:
            raise Transient(None, f"token endpoint: {type(err).__name__}") from err
        if answer.status_code == 429 or answer.status_code >= 500:
            raise Transient(answer.status_code, f"token endpoint: HTTP {answer.status_code}")
        if answer.status_code >= 400:
            # Our registration or key is wrong: no retry fixes that, and every event would wait.
            raise Undelivered(
                "fhir", answer.status_code, f"token endpoint refused: {_oauth_error(answer)}", permanent=True
            )
        try:
            body = answer.json()
            token, lifetime = str(body["access_token"]), float(body.get("expires_in", 300))
        except (ValueError, KeyError, TypeError):
            raise Transient(answer.status_code, "token endpoint: no access_token in its answer") from None
        return token, self.clock() + max(lifetime - EARLY_S, 1.0)


def _oauth_error(answer: httpx.Response) -> str:
    try:
        body = answer.json()
    except ValueError:
        return f"HTTP {answer.status_code}"
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return f"HTTP {answer.status_code} {body['error'][:100]}"
    return f"HTTP {answer.status_code}"
