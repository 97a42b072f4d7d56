#!/usr/bin/env python3
"""Print the RabbitMQ password hash of a password, for ``broker/definitions.json``.

RabbitMQ's ``rabbit_password_hashing_sha256`` stores base64(salt + sha256(salt + password)) with a
4-byte random salt; a hash made here is what ``rabbitmqctl hash_password`` would print.

    python scripts/rabbitmq_password_hash.py 'new password'
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import sys


def rabbitmq_password_hash(password: str, salt: bytes | None = None) -> str:
    salt = secrets.token_bytes(4) if salt is None else salt
    if len(salt) != 4:
        raise ValueError(f"RabbitMQ salts are 4 bytes, got {len(salt)}")
    digest = hashlib.sha256(salt + password.encode("utf-8")).digest()
    return base64.b64encode(salt + digest).decode("ascii")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    print(rabbitmq_password_hash(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
