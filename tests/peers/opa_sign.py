#!/usr/bin/env python3
"""Builds and signs an OPA bundle the way OPA's documentation describes `opa build
--signing-key` (https://www.openpolicyagent.org/docs/management-bundles#signing):
an independent signer (Python's tarfile, hashlib and json, PyJWT with RS256), so the
gateway's verifier is checked against an implementation it shares no code with.

usage: opa_sign.py SRC_DIR OUT_DIR
  reads every file under SRC_DIR; writes OUT_DIR/bundle.tar.gz (with .signatures.json)
  and OUT_DIR/public.pem (the RSA verification key).
"""
import hashlib
import io
import json
import os
import sys
import tarfile

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def file_hash(name, content):
    # OPA: a JSON file (and .manifest) is hashed over its canonical form: sorted keys,
    # no whitespace; any other file over its bytes.
    if name.endswith(".json") or os.path.basename(name) == ".manifest":
        value = json.loads(content)
        content = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(content).hexdigest()


def main():
    src, out = sys.argv[1], sys.argv[2]
    files = {}
    for root, _, names in os.walk(src):
        for n in names:
            path = os.path.join(root, n)
            rel = os.path.relpath(path, src).replace(os.sep, "/")
            with open(path, "rb") as f:
                files[rel] = f.read()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = {
        "files": [
            {"name": name, "hash": file_hash(name, content), "algorithm": "SHA-256"}
            for name, content in sorted(files.items())
        ],
        "keyid": "python_key",
        "scope": "write",
        "iat": 1700000000,
        "iss": "JWTService",
    }
    token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "python_key"})
    files[".signatures.json"] = json.dumps({"signatures": [token]}).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo("/" + name)  # OPA's own bundles name files from the root
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "bundle.tar.gz"), "wb") as f:
        f.write(buf.getvalue())
    with open(os.path.join(out, "public.pem"), "wb") as f:
        f.write(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


if __name__ == "__main__":
    main()
