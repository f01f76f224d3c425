"""The tool-server check for ciba-gate approval tokens, in Python (PyJWT).

    verify_approval.py ISSUER AUDIENCE   reads JSON lines {"authorization", "tool",
                                         "arguments"} on stdin, answers one line each:
                                         "ok <sub>" or "refused: <why>"

A call may run only when its bearer token is a JWT signed by the OP's JWKS, for this
audience, unexpired, whose authorization_details hold a ciba_gate_tool_call entry for
this tool whose call_digest is the SHA-256 of the JCS form of {name, arguments}, and
whose jti was never seen before.
"""

import hashlib
import json
import sys
import time
import urllib.request

import jwt  # PyJWT, with the cryptography extra

ALGORITHMS = ["RS256", "PS256", "ES256", "EdDSA"]


def call_digest(name, arguments):
    # JCS (RFC 8785) for JSON without floating-point numbers or characters outside the
    # Basic Multilingual Plane in keys: sorted keys, no whitespace, UTF-8.
    canonical = json.dumps(
        {"name": name, "arguments": arguments if arguments is not None else {}},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class Verifier:
    def __init__(self, issuer, audience):
        with urllib.request.urlopen(f"{issuer}/.well-known/openid-configuration") as r:
            jwks_uri = json.load(r)["jwks_uri"]
        self.keys = jwt.PyJWKClient(jwks_uri)
        self.issuer = issuer
        self.audience = audience
        self.seen = {}  # jti -> exp

    def refusal(self, authorization, tool, arguments):
        """Why the call may not run, or None (and the token is used up)."""
        if not authorization or not authorization.startswith("Bearer "):
            return "no approval token"
        token = authorization[len("Bearer "):]
        try:
            key = self.keys.get_signing_key_from_jwt(token).key
            claims = jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iss", "aud", "jti"]},
            )
        except jwt.PyJWTError as e:
            return f"the approval token is not valid ({type(e).__name__})"
        digest = call_digest(tool, arguments)
        if not any(
            d.get("type") == "ciba_gate_tool_call"
            and d.get("tool") == tool
            and d.get("call_digest") == digest
            for d in claims.get("authorization_details") or []
        ):
            return "the approval token approves a different call"
        now = time.time()
        self.seen = {j: e for j, e in self.seen.items() if e >= now}
        if claims["jti"] in self.seen:
            return "the approval token was used before"
        self.seen[claims["jti"]] = claims["exp"]
        return None


def main():
    verifier = Verifier(sys.argv[1], sys.argv[2])
    for line in sys.stdin:
        call = json.loads(line)
        why = verifier.refusal(call.get("authorization"), call["tool"], call.get("arguments"))
        print("ok" if why is None else f"refused: {why}", flush=True)


if __name__ == "__main__":
    main()
