"""A CDS client for the tests, as an EHR is one: an EC P-384 key, its JWKS served over HTTP on
a local port, and ES384 bearer tokens with the claims the CDS Hooks specification names."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

ISSUER = "https://ehr.example.org"


class CdsClient:
    def __init__(self, kid: str = "ehr-key-1") -> None:
        self.kid = kid
        self.key = ec.generate_private_key(ec.SECP384R1())
        jwk = json.loads(ECAlgorithm.to_jwk(self.key.public_key()))
        jwks = json.dumps({"keys": [{**jwk, "kid": kid, "alg": "ES384", "use": "sig"}]}).encode()

        class Keys(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(jwks)))
                self.end_headers()
                self.wfile.write(jwks)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Keys)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.jwks_url = f"http://127.0.0.1:{self._server.server_port}/jwks.json"

    def token(
        self, aud: str, *, issuer: str = ISSUER, lifetime_s: int = 240, jti: str | None = None, **claims
    ) -> str:
        now = int(time.time())
        payload = {
            "iss": issuer,
            "sub": "ehr-client",
            "aud": aud,
            "iat": now,
            "exp": now + lifetime_s,
            "jti": jti or str(uuid.uuid4()),
            **claims,
        }
        return jwt.encode(payload, self.key, algorithm="ES384", headers={"kid": self.kid, "typ": "JWT"})

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
