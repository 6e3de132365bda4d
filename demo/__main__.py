"""`python -m demo`: serve the demo board."""

from __future__ import annotations

import argparse

import uvicorn

from demo.app import create_app


def main() -> None:
    parser = argparse.ArgumentParser(description="Freshwire's demo board")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18090)
    args = parser.parse_args()
    uvicorn.run(create_app(), host=args.host, port=args.port, access_log=False, log_level="info")


if __name__ == "__main__":
    main()
