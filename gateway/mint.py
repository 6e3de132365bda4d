"""`python -m gateway.mint` / `freshwire-token`: mint an HS256 token for development.

    python -m gateway.mint --sub alice --keys 'tenant:1:*' 'card:*' --ttl 3600

Without FRESHWIRE_JWT_SECRET or --secret it signs with the development secret `make up` runs with
(and says so on stderr), so the command works against the dev stack as the docs show it.
"""

from __future__ import annotations

import argparse
import os
import sys

from gateway.auth import mint
from gateway.settings import DEV_SECRET


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sub", default="dev")
    parser.add_argument("--keys", nargs="+", required=True, help="key patterns, e.g. 'tenant:1:*'")
    parser.add_argument("--ttl", type=int, default=3600, help="seconds until the token expires")
    parser.add_argument("--secret", default=os.environ.get("FRESHWIRE_JWT_SECRET", ""),
                        help="HS256 secret (env FRESHWIRE_JWT_SECRET)")
    args = parser.parse_args(argv)
    secret = args.secret
    if not secret:
        secret = DEV_SECRET
        print("freshwire-token: signing with the development secret of `make up` (only its gateways, in "
              "FRESHWIRE_DEV_MODE, accept it); set FRESHWIRE_JWT_SECRET or --secret for any other", file=sys.stderr)
    print(mint(secret, args.sub, args.keys, args.ttl))
    return 0


if __name__ == "__main__":
    sys.exit(main())
