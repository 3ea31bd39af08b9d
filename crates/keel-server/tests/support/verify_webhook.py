"""Verifies one Standard Webhooks delivery with the reference library from PyPI
(`standardwebhooks`), independently of keel's own signing code.

usage: verify_webhook.py SECRET HEADERS_JSON < BODY
Prints "verified" and exits 0, or prints the library's error and exits 1.
"""
import json
import sys

from standardwebhooks.webhooks import Webhook

secret, headers = sys.argv[1], json.loads(sys.argv[2])
body = sys.stdin.buffer.read()
try:
    Webhook(secret).verify(body, headers)
except Exception as e:  # the library raises WebhookVerificationError
    print(f"not verified: {e}")
    sys.exit(1)
print("verified")
