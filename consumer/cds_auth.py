"""Who may ask the CDS Hooks service: the EHR's signed JWT, as the specification asks.

Each request carries `Authorization: Bearer <JWT>` from the CDS client: signed with one of the
client's keys (its JWKS, at a URL configured for its issuer here: TDM_CDS_HOOKS_ISSUERS, never
one the token names), `iss` a configured issuer, `aud` this service's endpoint that was called
(TDM_CDS_HOOKS_URL + the path), `exp` at most five minutes ahead, `iat`, and a `jti` not seen
before (a replayed token is refused). Anything else is 401: the cards carry patient data.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

import jwt

ALGORITHMS = ["RS384", "ES384", "RS256", "ES256", "RS512", "ES512"]
MAX_LIFETIME_S = 300  # the specification: a token expires within five minutes
LEEWAY_S = 30  # clocks differ


class Unauthorized(Exception):
    """Why a request is refused (said to the caller; it names no patient)."""


class TokenCheck:
    def __init__(
        self,
        issuers: Mapping[str, str],
        base_url: str,
        *,
        clock: Callable[[], float] = time.time,
        keys: Callable[[str], jwt.PyJWKClient] | None = None,
    ) -> None:
        self.issuers = dict(issuers)
        self.base_url = base_url.rstrip("/")
        self.clock = clock
        self._clients: dict[str, jwt.PyJWKClient] = {}
        self._keys = keys or (lambda url: jwt.PyJWKClient(url, cache_keys=True, lifespan=300, timeout=5))
        self._seen: dict[str, float] = {}  # jti -> when it expires
        self._lock = threading.Lock()

    def check(self, authorization: str | None, path: str) -> str:
        """The caller's issuer, or Unauthorized."""
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthorized("a bearer JWT is required (Authorization: Bearer ...)")
        token = authorization.removeprefix("Bearer ").strip()
        try:
            claimed = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise Unauthorized("the bearer token is not a JWT") from None
        issuer = claimed.get("iss")
        if not isinstance(issuer, str) or issuer not in self.issuers:
            raise Unauthorized("the token's issuer is not one this service trusts")
        try:
            key = self._client(issuer).get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                key.key,
                algorithms=ALGORITHMS,
                audience=self.base_url + path,
                issuer=issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iat", "iss", "aud", "jti"]},
            )
        except jwt.PyJWKClientError:
            raise Unauthorized("the issuer's signing key could not be found") from None
        except jwt.PyJWTError as err:
            raise Unauthorized(f"the token does not verify: {type(err).__name__}") from None
        now = self.clock()
        if float(claims["exp"]) - now > MAX_LIFETIME_S + LEEWAY_S:
            raise Unauthorized("the token lives longer than five minutes")
        self._once(str(claims["jti"]), float(claims["exp"]), now)
        return issuer

    def _client(self, issuer: str) -> jwt.PyJWKClient:
        with self._lock:
            if issuer not in self._clients:
                self._clients[issuer] = self._keys(self.issuers[issuer])
            return self._clients[issuer]

    def _once(self, jti: str, expires: float, now: float) -> None:
        with self._lock:
            if len(self._seen) > 10_000:  # bounded: the expired ones go
                self._seen = {j: e for j, e in self._seen.items() if e + LEEWAY_S > now}
            if jti in self._seen:
                raise Unauthorized("the token was used before (jti): a replay")
            self._seen[jti] = expires
