"""Python's http.client (stdlib only), for tests/real_clients.rs:

    python3 tests/clients/py_client.py get URL [post URL FILE] [post-close URL FILE] ...

`post` sends FILE as an iterable of 64 KiB pieces with `Transfer-Encoding: chunked` and
`encode_chunked=True`, so each piece goes out as one chunk; `post-close` does the same with a
`Connection: close` header, as a client that opens one connection per upload does.

One line per operation on stdout: `OP STATUS VERSION BODY_LENGTH BODY_SHA256 PREVIEW`.
"""

import hashlib
import http.client
import sys
from urllib.parse import urlsplit


def pieces(path):
    with open(path, "rb") as file:
        while True:
            piece = file.read(64 * 1024)
            if not piece:
                return
            yield piece


def run(op, url, path=None):
    parts = urlsplit(url)
    target = parts.path + ("?" + parts.query if parts.query else "")
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        if op == "get":
            connection.request("GET", target)
        elif op in ("post", "post-close"):
            headers = {"Transfer-Encoding": "chunked"}
            if op == "post-close":
                headers["Connection"] = "close"
            connection.request(
                "POST", target, body=pieces(path), headers=headers, encode_chunked=True
            )
        else:
            raise SystemExit(f"unknown operation {op}")
        response = connection.getresponse()
        sha256 = hashlib.sha256()
        length = 0
        preview = ""
        while True:
            piece = response.read(64 * 1024)
            if not piece:
                break
            sha256.update(piece)
            length += len(piece)
            if len(preview) < 80:
                preview += "".join(chr(b) if 32 < b < 127 else "." for b in piece[:80])
        version = {10: "1.0", 11: "1.1"}.get(response.version, str(response.version))
        print(f"{op} {response.status} {version} {length} {sha256.hexdigest()} {preview[:80]}")
    finally:
        connection.close()


def main(args):
    i = 0
    while i < len(args):
        op, url = args[i], args[i + 1]
        i += 2
        path = None
        if op != "get":
            path = args[i]
            i += 1
        run(op, url, path)
        sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
