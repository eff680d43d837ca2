"""Verifies hooksign deliveries with the receivers' own libraries.

Reads a JSON list of cases on stdin. Each case: scheme, body (UTF-8 text), headers (lower-case
names), keys (every key the delivery must verify under: the new secret first, then the previous
one during an overlap window; the Ed25519 scheme gives whpk_ public keys). Each case must verify
under each of its keys, and must fail under an unrelated key and with a changed body (negative
controls, so a verifier that accepts everything cannot pass). Prints one line per case; exits 1
on any failure.

Libraries: standardwebhooks 1.1.0 (Webhook.verify), stripe 16.1.0
(WebhookSignature.verify_header), cryptography (Ed25519, as Standard Webhooks documents v1a),
and GitHub's documented Python snippet (hmac + compare_digest) for github and storno.
"""

import base64
import hashlib
import hmac
import json
import os
import sys
import time

import stripe
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from standardwebhooks import Webhook, WebhookVerificationError


def hex_hmac(key: str, body: str) -> str:
    return hmac.new(key.encode("utf-8"), msg=body.encode("utf-8"), digestmod=hashlib.sha256).hexdigest()


def verify(scheme: str, key: str, body: str, headers: dict) -> bool:
    if scheme == "storno":
        return hmac.compare_digest(hex_hmac(key, body), headers["x-storno-signature"])
    if scheme == "github":
        # GitHub's "Validating webhook deliveries" example.
        expected = "sha256=" + hex_hmac(key, body)
        return hmac.compare_digest(expected, headers["x-hub-signature-256"])
    if scheme == "stripe":
        try:
            stripe.WebhookSignature.verify_header(body, headers["stripe-signature"], key, tolerance=300)
            return True
        except stripe.SignatureVerificationError:
            return False
    if scheme == "standard-webhooks":
        try:
            Webhook(key).verify(body, headers)
            return True
        except WebhookVerificationError:
            return False
    if scheme == "standard-webhooks-ed25519":
        if abs(time.time() - int(headers["webhook-timestamp"])) > 300:
            return False
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(key.removeprefix("whpk_")))
        message = f'{headers["webhook-id"]}.{headers["webhook-timestamp"]}.{body}'.encode("utf-8")
        for entry in headers["webhook-signature"].split(" "):
            version, _, signature = entry.partition(",")
            if version != "v1a":
                continue
            try:
                public.verify(base64.b64decode(signature), message)
                return True
            except InvalidSignature:
                pass
        return False
    raise ValueError(f"unknown scheme {scheme}")


def unrelated_key(scheme: str) -> str:
    if scheme == "standard-webhooks":
        return "whsec_" + base64.b64encode(os.urandom(32)).decode()
    if scheme == "standard-webhooks-ed25519":
        public = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
        return "whpk_" + base64.b64encode(public).decode()
    return "whsec_" + os.urandom(32).hex()


def main() -> int:
    failures = 0
    for case in json.load(sys.stdin):
        scheme, body, headers = case["scheme"], case["body"], case["headers"]
        problems = []
        for index, key in enumerate(case["keys"]):
            if not verify(scheme, key, body, headers):
                problems.append(f"key {index} does not verify")
        if verify(scheme, unrelated_key(scheme), body, headers):
            problems.append("an unrelated key verifies")
        if verify(scheme, case["keys"][0], body + " ", headers):
            problems.append("a changed body verifies")
        label = f'{scheme} with {len(case["keys"])} key(s)'
        if problems:
            failures += 1
            print(f"FAIL {label}: {'; '.join(problems)}")
        else:
            print(f"ok   {label}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
