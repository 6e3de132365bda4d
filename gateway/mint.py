"""`python -m gateway.mint` / `freshwire-token`: mint an HS256 token for development.

    python -m gateway.mint --sub alice --keys 'tenant:1:*' 'card:*' --ttl 3600
"""

from __future__ import annotations

import argparse
import os
import sys

from gateway.auth import mint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sub", default="dev")
    parser.add_argument("--keys", nargs="+", required=True, help="key patterns, e.g. 'tenant:1:*'")
    parser.add_argument("--ttl", type=int, default=3600, help="seconds until the token expires")
    parser.add_argument("--secret", default=os.environ.get("FRESHWIRE_JWT_SECRET", ""),
                        help="HS256 secret (env FRESHWIRE_JWT_SECRET)")
    args = parser.parse_args(argv)
    if not args.secret:
        print("freshwire-token: set FRESHWIRE_JWT_SECRET or pass --secret", file=sys.stderr)
        return 2
    print(mint(args.secret, args.sub, args.keys, args.ttl))
    return 0


if __name__ == "__main__":
    sys.exit(main())
