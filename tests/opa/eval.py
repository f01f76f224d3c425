#!/usr/bin/env python3
"""Evaluates ciba_gate rules with real OPA (opa-golib-python-bindings) for a list of inputs.

Reads one JSON document on stdin:
  {"modules": [{"name": "...", "source": "..."}], "data": [{...}, ...],
   "rules": ["ciba_gate.deny", ...], "inputs": [{...}, ...]}
Prints one JSON document on stdout:
  {"opa": "<version or null>", "results": [{"ciba_gate.deny": value, ...}, ...]}
A rule missing from a result object was undefined; {"error": "..."} when evaluation failed.
"""
import json
import sys

try:
    import opa_bindings
except ImportError as exc:  # pragma: no cover - reported to the Rust test
    print(json.dumps({"fatal": f"cannot import opa_bindings: {exc}"}))
    sys.exit(2)


def main():
    req = json.load(sys.stdin)
    engine = opa_bindings.OpaEngine()
    for module in req["modules"]:
        engine.add_policy(module["name"], module["source"])
    for doc in req["data"]:
        engine.add_data(doc)
    results = []
    for inp in req["inputs"]:
        out = {}
        for rule in req["rules"]:
            try:
                out[rule] = engine.eval_document(rule, inp)
            except opa_bindings.OpaUndefinedError:
                pass
            except opa_bindings.OpaError as exc:
                out.setdefault("error", {})[rule] = str(exc)
        results.append(out)
    version = getattr(opa_bindings, "__version__", None)
    print(json.dumps({"opa": version, "results": results}))


if __name__ == "__main__":
    main()
