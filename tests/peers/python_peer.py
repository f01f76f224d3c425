#!/usr/bin/env python3
"""Foreign JSON readers for tests/json_parsers.rs: Python's json module three ways.

Reads one JSON string of base64 per stdin line (a raw request body), parses the bytes
as a Python web server would (json.loads on bytes) and writes one JSON line per input:
{"last": R, "first": R, "strict": R}, where R is {"ok": canonical} or {"err": class}.
  last   - json.loads as is: a duplicate key keeps its last value
  first  - object_pairs_hook keeping the first value (like RapidJSON, simdjson)
  strict - object_pairs_hook refusing duplicate keys

Canonical form (the same in node_peer.js and the Rust test): null / true / false;
numbers as exact decimals (positional, no exponent, no trailing fraction zeros, "-0"
for negative zero); strings quoted with every UTF-16 code unit outside printable
ASCII, and '"' and '\\', written as \\uXXXX (lowercase hex); object members sorted by
their canonical key text.
"""
import base64
import json
import sys
from decimal import Decimal


class DuplicateKey(ValueError):
    pass


def first_wins(pairs):
    out = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


def refuse_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey()
        out[key] = value
    return out


def canonical_string(text):
    parts = ['"']
    for ch in text:
        cp = ord(ch)
        if 0x20 <= cp <= 0x7E and ch not in '"\\':
            parts.append(ch)
        elif cp > 0xFFFF:
            cp -= 0x10000
            parts.append("\\u%04x\\u%04x" % (0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF)))
        else:
            parts.append("\\u%04x" % cp)
    parts.append('"')
    return "".join(parts)


def canonical_number(number):
    if isinstance(number, int):
        return str(number)
    if number != number or number in (float("inf"), float("-inf")):
        return repr(number)  # NaN / inf: no JSON value, kept distinct
    text = format(Decimal(number), "f")  # Decimal(float) is the exact binary value
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def canonical(value):
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return canonical_number(value)
    if isinstance(value, str):
        return canonical_string(value)
    if isinstance(value, list):
        return "[" + ",".join(canonical(item) for item in value) + "]"
    members = sorted((canonical_string(k), canonical(v)) for k, v in value.items())
    return "{" + ",".join(k + ":" + v for k, v in members) + "}"


def read(body, **options):
    try:
        return {"ok": canonical(json.loads(body, **options))}
    except Exception as error:  # any refusal is a result to compare
        return {"err": type(error).__name__}


def main():
    sys.setrecursionlimit(10_000)
    for line in sys.stdin:
        body = base64.b64decode(json.loads(line))
        result = {
            "last": read(body),
            "first": read(body, object_pairs_hook=first_wins),
            "strict": read(body, object_pairs_hook=refuse_duplicates),
        }
        sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
