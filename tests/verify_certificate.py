#!/usr/bin/env python3
"""Verify a lethe deletion certificate with a third-party JOSE library (jwcrypto), as a
controller would: given the issuer's public JWK Set (`lethe keys public --format jwks`).

usage: verify_certificate.py CERTIFICATE.jws ISSUER.jwks
Prints the verified payload (JSON) and exits 0, or prints why and exits 1.
"""
import json, sys
from jwcrypto import jwk, jws

cert = open(sys.argv[1]).read().strip()
keys = jwk.JWKSet.from_json(open(sys.argv[2]).read())
token = jws.JWS()
try:
    token.deserialize(cert)
    kid = token.jose_header.get("kid")
    key = keys.get_key(kid)
    if key is None:
        raise ValueError(f"unknown kid {kid}")
    token.verify(key, alg="EdDSA")
except Exception as e:  # jwcrypto raises several types; all mean "not verified"
    print(f"NOT VERIFIED: {type(e).__name__}: {e}")
    sys.exit(1)
print(json.dumps(json.loads(token.payload), indent=1))
