#!/usr/bin/env node
// Foreign JSON reader for tests/json_parsers.rs: Node's JSON.parse (a duplicate key
// keeps its last value; numbers are IEEE 754 doubles; lone surrogates survive).
// Reads one JSON string of base64 per stdin line, decodes the bytes as fetch's
// Response.json() does (UTF-8, a leading BOM dropped, bad bytes become U+FFFD) and
// writes {"node": R} per line, R being {"ok": canonical} or {"err": name}. The
// canonical form is described in python_peer.py.
"use strict";

const decoder = new TextDecoder("utf-8");

function canonicalString(text) {
  let out = '"';
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    const ch = text[i];
    if (unit >= 0x20 && unit <= 0x7e && ch !== '"' && ch !== "\\") {
      out += ch;
    } else {
      out += "\\u" + unit.toString(16).padStart(4, "0");
    }
  }
  return out + '"';
}

// The exact decimal value of a double: mantissa × 2^exponent, written out in full.
function canonicalNumber(x) {
  if (!Number.isFinite(x)) return String(x);
  if (Object.is(x, -0)) return "-0";
  const sign = x < 0 ? "-" : "";
  const magnitude = Math.abs(x);
  if (Number.isInteger(magnitude)) return sign + BigInt(magnitude).toString();
  const view = new DataView(new ArrayBuffer(8));
  view.setFloat64(0, magnitude);
  const bits = view.getBigUint64(0);
  let biased = Number((bits >> 52n) & 0x7ffn);
  let mantissa = bits & ((1n << 52n) - 1n);
  if (biased === 0) biased = 1;
  else mantissa |= 1n << 52n;
  const fractionDigits = 1075 - biased; // > 0: the value is not an integer
  const digits = (mantissa * 5n ** BigInt(fractionDigits))
    .toString()
    .padStart(fractionDigits + 1, "0");
  const integer = digits.slice(0, digits.length - fractionDigits);
  const fraction = digits.slice(digits.length - fractionDigits).replace(/0+$/, "");
  return sign + integer + (fraction ? "." + fraction : "");
}

function canonical(value) {
  if (value === null) return "null";
  if (value === true) return "true";
  if (value === false) return "false";
  if (typeof value === "number") return canonicalNumber(value);
  if (typeof value === "string") return canonicalString(value);
  if (Array.isArray(value)) return "[" + value.map(canonical).join(",") + "]";
  const members = Object.keys(value).map((k) => [canonicalString(k), canonical(value[k])]);
  members.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  return "{" + members.map(([k, v]) => k + ":" + v).join(",") + "}";
}

function read(bytes) {
  try {
    return { ok: canonical(JSON.parse(decoder.decode(bytes))) };
  } catch (error) {
    return { err: error.name };
  }
}

const lines = require("fs").readFileSync(0, "utf8").split("\n");
const out = [];
for (const line of lines) {
  if (line === "") continue;
  out.push(JSON.stringify({ node: read(Buffer.from(JSON.parse(line), "base64")) }));
}
process.stdout.write(out.length ? out.join("\n") + "\n" : "");
