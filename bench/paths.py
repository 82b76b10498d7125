#!/usr/bin/env python3
"""Time POST /api/v1/paths on a running LearnTrac server.

Signs in with the password grant, then creates --requests learning paths
of up to --max-concepts tickets each, cycling through QUERIES, over one
keep-alive HTTPS connection. Prints one line per request and a final line
`paths: median_ms=… p90_ms=… min_tickets=… max_tickets=… short=…` that
bench/run parses. Standard library only.
"""

import argparse
import http.client
import json
import math
import ssl
import statistics
import sys
import time
import urllib.parse

# The timed figure is for paths of 20 tickets, so the goals are broad
# enough that 20 sections of "An Introduction to R" pass the path's
# relevance filters (checked with R-intro.pdf alone in the library). A
# narrow goal ("factors and levels") gives a path of a few tickets, which
# is faster and would flatter the figure. Each request creates a new path.
QUERIES = [
    "data in R: reading files, data frames, lists, vectors, missing values and factors",
]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="HOST:PORT of the HTTPS gateway")
    parser.add_argument("--cacert", required=True, help="CA certificate (PEM) that signed the server certificate")
    parser.add_argument("--username", required=True, help="email of the user to sign in as")
    parser.add_argument("--password-file", required=True, help="file whose first line is the password")
    parser.add_argument("--requests", type=int, default=30, help="number of paths to create (default: 30)")
    parser.add_argument("--max-concepts", type=int, default=20, help="max_concepts of each path (default: 20)")
    parser.add_argument("--timeout", type=float, default=120.0, help="timeout of each request, in seconds (default: 120)")
    return parser.parse_args()


def request(connection, method, path, body=None, headers=None):
    """Send one request and return (status, parsed JSON body or raw text)."""
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    data = response.read()
    try:
        return response.status, json.loads(data)
    except ValueError:
        return response.status, data.decode("utf-8", "replace")


def sign_in(connection, username, password):
    form = urllib.parse.urlencode(
        {"grant_type": "password", "client_id": "learntrac-cli", "username": username, "password": password}
    )
    status, body = request(
        connection, "POST", "/oauth2/token", form, {"Content-Type": "application/x-www-form-urlencoded"}
    )
    if status != 200 or not isinstance(body, dict) or "access_token" not in body:
        sys.exit(f"error: POST /oauth2/token returned HTTP {status}: {body}")
    return body["access_token"]


def percentile(sorted_values, fraction):
    """Return the nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def main():
    args = parse_args()
    if args.requests < 1:
        sys.exit("error: --requests must be at least 1")
    with open(args.password_file, encoding="utf-8") as file:
        password = file.readline().rstrip("\r\n")

    host, _, port = args.address.rpartition(":")
    context = ssl.create_default_context(cafile=args.cacert)
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=args.timeout)

    token = sign_in(connection, args.username, password)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    # The TLS handshake happened during sign-in, so the timed requests below
    # reuse an open connection, as wrk's do.
    status, body = request(connection, "GET", "/api/v1/me", headers=headers)
    if status != 200:
        sys.exit(f"error: GET /api/v1/me with the new token returned HTTP {status}: {body}")

    durations_ms = []
    ticket_counts = []
    for number in range(args.requests):
        query = QUERIES[number % len(QUERIES)]
        payload = json.dumps({"query": query, "max_concepts": args.max_concepts})
        started = time.perf_counter()
        status, body = request(connection, "POST", "/api/v1/paths", payload, headers)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        if status != 201 or not isinstance(body, dict):
            sys.exit(f"error: POST /api/v1/paths for {query!r} returned HTTP {status}: {body}")
        tickets = len(body.get("tickets", []))
        durations_ms.append(elapsed_ms)
        ticket_counts.append(tickets)
        print(f"  path {body.get('path_id')}: {elapsed_ms:8.1f} ms  {tickets:2d} tickets  {query!r}")

    ordered = sorted(durations_ms)
    short_paths = sum(1 for count in ticket_counts if count < args.max_concepts)
    if short_paths:
        print(f"warning: {short_paths} of {args.requests} paths have fewer than {args.max_concepts} tickets", file=sys.stderr)
    print(
        f"paths: median_ms={statistics.median(ordered):.1f} p90_ms={percentile(ordered, 0.9):.1f} "
        f"min_ms={ordered[0]:.1f} max_ms={ordered[-1]:.1f} "
        f"min_tickets={min(ticket_counts)} max_tickets={max(ticket_counts)} short={short_paths}"
    )


if __name__ == "__main__":
    try:
        main()
    except (OSError, http.client.HTTPException) as error:
        sys.exit(f"error: the request to LearnTrac failed: {error!r}")
