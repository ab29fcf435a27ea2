#!/usr/bin/env python3
"""Smoke test: the official Pictify Python SDK (PyPI `pictify`) works against the emulator.

Usage (emulator already running, e.g. `cargo run -p pictify-emulator`):
    pip install pictify==1.1.0
    python3 scripts/sdk-smoke.py [--base-url http://127.0.0.1:4010] [--api-key pk_test_emulator]

Checks: render_batch answers a pending batch with the right item count; get_batch_results
reaches a terminal status with per-item records in the SDK shape; an unknown batch raises the
SDK's not-found error; a bad key raises its authentication error. Exits non-zero on failure.
"""

import argparse
import sys
import time

from pictify import Pictify
from pictify.errors import AuthenticationError, PictifyError, TemplateNotFoundError

TERMINAL = {"completed", "partial", "failed", "cancelled"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:4010")
    parser.add_argument("--api-key", default="pk_test_emulator")
    parser.add_argument("--template", default="tmpl_social_card")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the batch")
    args = parser.parse_args()

    sets = [{"title": f"SDK smoke {i}", "author": "Émilie 🎉"} for i in range(3)]
    with Pictify(api_key=args.api_key, base_url=args.base_url) as client:
        submitted = client.render_batch(args.template, sets, format="png", quality=0.9, concurrency=2)
        check(submitted.batch_id.startswith("batch_"), f"batch id {submitted.batch_id!r}")
        check(submitted.status == "pending", f"initial status {submitted.status!r}")
        check(submitted.total_items == len(sets), f"total_items {submitted.total_items}")

        deadline = time.monotonic() + args.timeout
        results = client.get_batch_results(submitted.batch_id)
        while results.status not in TERMINAL:
            check(time.monotonic() < deadline, f"batch still {results.status!r} after {args.timeout}s")
            time.sleep(0.2)
            results = client.get_batch_results(submitted.batch_id)
        check(results.status == "completed", f"final status {results.status!r}, errors {results.errors}")
        check(results.completed_items == len(sets) and results.progress == 100, "counters")
        check(sorted(r.index for r in results.results) == list(range(len(sets))), "result indexes")
        check("title" in (results.results[0].variables or []), "variable names in results")

        try:
            client.get_batch_results("batch_does_not_exist")
            check(False, "unknown batch should raise")
        except TemplateNotFoundError:
            pass

    with Pictify(api_key="pk_test_wrong", base_url=args.base_url, max_retries=0) as client:
        try:
            client.get_batch_results(submitted.batch_id)
            check(False, "bad key should raise")
        except AuthenticationError:
            pass

    print(f"sdk-smoke: ok ({submitted.batch_id}, {len(sets)} items)")
    return 0


def check(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"sdk-smoke: FAILED: {what}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except PictifyError as e:
        sys.exit(f"sdk-smoke: FAILED with {type(e).__name__}: {e}")
