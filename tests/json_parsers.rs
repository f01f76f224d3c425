//! Differential test of `json_strict::parse` against foreign JSON readers run as real
//! processes (tests/peers/): Python's json module (last duplicate wins, first wins, and
//! refusing duplicates) and Node's `JSON.parse`. The property: whatever the gateway
//! accepts, every peer accepts and reads exactly the same value; whatever two peers
//! read differently, the gateway refuses.
//!
//! The corpus is hand-written nasty cases plus a few thousand generated bodies (fixed
//! seed) mixing duplicate keys, escapes, numbers and nesting. All inputs go to each peer
//! in one process invocation, as a JSON-lines file of base64 bodies.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ciba_gate::json_strict::{self, Limits, StrictJsonError};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::Value;

const GENERATED: usize = 4000;

/// Named so that `cargo nextest run --lib json_strict --test json_parsers` selects it.
mod json_strict_vs_peers {
    use super::*;

    #[test]
    fn whatever_the_strict_parser_accepts_every_peer_reads_the_same_and_every_disagreement_is_refused()
     {
        let corpus = corpus();
        let peers = run_peers(&corpus);

        let mut accepted = 0;
        let mut disagreements = 0;
        let mut refusals: BTreeMap<&'static str, usize> = BTreeMap::new();
        let mut refused_though_peers_agree = 0;
        for (body, readings) in corpus.iter().zip(&peers) {
            let shown = String::from_utf8_lossy(body);
            let peers_disagree = readings.values().any(|r| r != &readings["last"]);
            disagreements += usize::from(peers_disagree);
            match json_strict::parse(body, Limits::default()) {
                Ok(value) => {
                    accepted += 1;
                    assert!(
                        !peers_disagree,
                        "accepted {shown:?} that peers read differently: {readings:?}"
                    );
                    let ours = canonical(&value);
                    for (peer, reading) in readings {
                        assert_eq!(
                            reading,
                            &Reading::Ok(ours.clone()),
                            "{peer} reads {shown:?} differently"
                        );
                    }
                    let plain: Value = serde_json::from_slice(body).expect("serde_json reads it");
                    assert_eq!(value, plain, "{shown:?}");
                }
                Err(error) => {
                    *refusals.entry(error.reason()).or_default() += 1;
                    let all_peers_read_it = readings.values().all(|r| matches!(r, Reading::Ok(_)));
                    refused_though_peers_agree += usize::from(!peers_disagree && all_peers_read_it);
                    check_error_is_safe_to_show(&error);
                }
            }
        }
        eprintln!(
            "{} inputs: {accepted} accepted, {disagreements} read differently by the peers \
             (all refused), {refused_though_peers_agree} refused though every peer reads the \
             same value; \
             refusals by reason: {refusals:?}",
            corpus.len()
        );
        // The corpus must exercise both sides and every class, or the property proves little.
        assert!(accepted >= 500, "only {accepted} accepted inputs");
        assert!(disagreements >= 500, "only {disagreements} disagreements");
        for reason in [
            "syntax",
            "bom",
            "invalid_utf8",
            "control_character",
            "trailing_bytes",
            "duplicate_key",
            "case_variant_key",
            "lone_surrogate",
            "nul_character",
            "lossy_number",
            "too_deep",
        ] {
            assert!(
                refusals.contains_key(reason),
                "no input refused as {reason}"
            );
        }
    }

    #[test]
    fn the_peers_really_disagree_on_the_reported_attacks() {
        // If the peers read these the same way, the differential test above proves nothing.
        let attacks: Vec<Vec<u8>> = [
            r#"{"params":{"name":"delete_repository","arguments":{},"name":"list_deployments"}}"#,
            r#"{"params":{"arguments":{"env":"dev"},"arguments":{"env":"prod"}}}"#,
            r#"{"id":9007199254740993}"#,
            r#"{"n":-0}"#,
            r#"{"a":1,"\u0061":2}"#,
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        for (body, readings) in attacks.iter().zip(run_peers(&attacks)) {
            let shown = String::from_utf8_lossy(body);
            assert!(
                readings.values().any(|r| r != &readings["last"]),
                "peers agree on {shown:?}: {readings:?}"
            );
            assert!(
                json_strict::parse(body, Limits::default()).is_err(),
                "{shown}"
            );
        }
    }
}

/// A refusal never repeats a string value and stays one short line.
fn check_error_is_safe_to_show(error: &StrictJsonError) {
    let message = error.to_string();
    assert!(!message.contains('\n'), "{message:?}");
    assert!(message.len() < 400, "{message:?}");
    for value in ["secret-value", "secret-other"] {
        assert!(!message.contains(value), "{message:?}");
    }
}

// ---------------------------------------------------------------------------- peers

#[derive(Debug, Clone, PartialEq, Eq)]
enum Reading {
    Ok(String),
    Refused,
}

/// Each peer's reading of each body, keyed by peer name (`last`, `first`, `strict`, `node`).
fn run_peers(corpus: &[Vec<u8>]) -> Vec<BTreeMap<String, Reading>> {
    let mut input = tempfile::NamedTempFile::new().expect("temp file");
    for body in corpus {
        writeln!(input, "\"{}\"", BASE64.encode(body)).expect("write input");
    }
    input.flush().expect("flush input");
    let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers");
    let mut readings = vec![BTreeMap::new(); corpus.len()];
    for (program, script) in [("python3", "python_peer.py"), ("node", "node_peer.js")] {
        let output = Command::new(program)
            .arg(peers.join(script))
            .stdin(std::fs::File::open(input.path()).expect("reopen input"))
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("{program} must be installed to run {script}: {e}"));
        assert!(
            output.status.success(),
            "{script} failed: {}",
            output.status
        );
        let lines: Vec<&[u8]> = output
            .stdout
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(lines.len(), corpus.len(), "{script} answered every input");
        for (line, slot) in lines.iter().zip(&mut readings) {
            let answer: BTreeMap<String, Value> = serde_json::from_slice(line).expect("peer line");
            for (peer, result) in answer {
                let reading = match result.get("ok").and_then(Value::as_str) {
                    Some(canonical) => Reading::Ok(canonical.to_owned()),
                    None => Reading::Refused,
                };
                slot.insert(peer, reading);
            }
        }
    }
    readings
}

/// The canonical form the peers write (see tests/peers/python_peer.py).
fn canonical(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => u.to_string(),
            (_, Some(i), _) => i.to_string(),
            (_, _, Some(f)) => exact_decimal(f),
            _ => unreachable!("a number is u64, i64 or f64"),
        },
        Value::String(s) => canonical_string(s),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(canonical).collect();
            format!("[{}]", items.join(","))
        }
        Value::Object(map) => {
            let mut members: Vec<(String, String)> = map
                .iter()
                .map(|(k, v)| (canonical_string(k), canonical(v)))
                .collect();
            members.sort();
            let members: Vec<String> = members
                .into_iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect();
            format!("{{{}}}", members.join(","))
        }
    }
}

/// The exact value of a double: 1074 fraction digits hold any double exactly.
fn exact_decimal(f: f64) -> String {
    if f == 0.0 {
        return if f.is_sign_negative() { "-0" } else { "0" }.into();
    }
    let text = format!("{f:.1074}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn canonical_string(s: &str) -> String {
    let mut out = String::from("\"");
    for unit in s.encode_utf16() {
        match char::from_u32(u32::from(unit)) {
            Some(c) if (' '..='~').contains(&c) && c != '"' && c != '\\' => out.push(c),
            _ => out.push_str(&format!("\\u{unit:04x}")),
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------- corpus

fn corpus() -> Vec<Vec<u8>> {
    let mut corpus: Vec<Vec<u8>> = hand_written().into_iter().map(<[u8]>::to_vec).collect();
    let mut rng = StdRng::seed_from_u64(0x6a73_6f6e);
    for _ in 0..GENERATED {
        corpus.push(generated_body(&mut rng));
    }
    corpus
}

fn hand_written() -> Vec<&'static [u8]> {
    vec![
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_deployments","arguments":{"env":"dev"}}}"#,
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_repository","arguments":{"repo":"core"},"name":"list_deployments"}}"#,
        br#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"deploy","arguments":{"env":"dev"},"arguments":{"env":"prod"}}}"#,
        br#"{"params":{"name":"deploy","n\u0061me":"list"}}"#,
        br#"{"params":{"name":"list_deployments","NAME":"delete_repository"}}"#,
        br#"{"a":{"b":1},"a":{"b":1}}"#,
        br#"{"__proto__":{"admin":true}}"#,
        br#"{"__proto__":1,"__proto__":2}"#,
        br#"{"constructor":{"prototype":{}}}"#,
        br#"{"":1,"":2}"#,
        br#"["\ud800"]"#,
        br#"["\udc00\ud800"]"#,
        br#"["\ud83d\ude00","\uD83D\uDE00"]"#,
        b"{\"\\ud83d\\ude00\":1,\"\xf0\x9f\x98\x80\":2}",
        br#"["\u0000"]"#,
        br#"["dev\u0000prod"]"#,
        br#"["\uffff\ufffe\ufdd0"]"#,
        b"[\"\xef\xbf\xbf\"]",
        b"[\"\xed\xa0\x80\"]",
        b"[\"\xff\"]",
        b"[\"\xc0\xaf\"]",
        b"\xef\xbb\xbf{\"a\":1}",
        b"{\"a\":1}\x00",
        b"{\"a\":1} x",
        b"{\"a\":1}{\"a\":2}",
        b"[1]\n",
        b"\x0c[1]",
        b"[\"a\tb\"]",
        b"[\"a\x1fb\"]",
        b"[\"\x7f\"]",
        b"[NaN]",
        b"[Infinity,-Infinity]",
        b"[1,]",
        b"{\"a\":1,}",
        b"[01]",
        b"[-0]",
        b"[-0.0]",
        b"[0.0,0e0,0E-0,0.000e+7]",
        b"[1.0,1,1E2,1e+2,100]",
        b"[0.1,0.30000000000000004]",
        b"[0.10000000000000000001]",
        b"[0.1000000000000000055511151231257827021181583404541015625]",
        b"[1e400]",
        b"[-1e400]",
        b"[1e-400]",
        b"[5e-324]",
        b"[2.4703282292062327e-324]",
        b"[1.7976931348623157e308]",
        b"[1.7976931348623159e308]",
        b"[9007199254740992]",
        b"[9007199254740993]",
        b"[18446744073709551615]",
        b"[18446744073709551616]",
        b"[-9223372036854775808]",
        b"[-9223372036854775809]",
        b"[1152921504606846976]",
        b"[1000000000000000000]",
        b"[100000000000000000000]",
        b"[1e20]",
        b"[123456789012345678901234567890]",
        b"[1.000000000000000000000000000000]",
        b"[1e0000000000000002]",
        b"[0e99999999999999999999]",
        b"[1e99999999999999999999]",
        b"{\"x\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}",
        b"",
        b" ",
        b"null",
        b"\"\"",
        b"{\"secret-token\":\"secret-value\",\"secret-token\":\"secret-other\"}",
    ]
}

const KEYS: &[&str] = &[
    "name",
    "n\\u0061me",
    "\\u006eame",
    "arguments",
    "env",
    "a",
    "\\u0061",
    "A",
    "\u{e9}",
    "\\u00e9",
    "e\\u0301",
    "\u{1f600}",
    "\\ud83d\\ude00",
    "__proto__",
    "constructor",
    "",
    "\\u0000",
    "x\\/y",
    "x/y",
    "\\ud800",
    "1",
    "01",
    "\\\"q\\\"",
    "secret-token",
    "NAME",
    "Env",
    "\\u212a",
    "k",
];

const STRING_PIECES: &[&[u8]] = &[
    b"dev",
    b"prod",
    b"secret-value",
    b"\\u0000",
    b"\\ud800",
    b"\\udc00",
    b"\\ud83d\\ude00",
    b"\\ud83d",
    b"\\uDBFF\\uDFFF",
    "\u{e9}".as_bytes(),
    "\u{1f600}".as_bytes(),
    b"\\n",
    b"\\\\",
    b"\\\"",
    b"\\/",
    b"\\b\\f\\r\\t",
    b"\x01",
    b"\t",
    b"\x1f",
    b"\x7f",
    b"\xff",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xe2\x82",
    b"\\uFFFE",
    b"\\uffff",
    b"\xef\xbf\xbf",
    b"\\u2028",
    "\u{2028}".as_bytes(),
    b"\\x",
    b"\\u12",
    b"\\u0041",
];

const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "1",
    "-1",
    "7",
    "42",
    "1.0",
    "1E2",
    "1e+2",
    "1e-2",
    "0.5",
    "0.1",
    "0.30000000000000004",
    "0.10000000000000000001",
    "1e400",
    "-1e400",
    "1e-400",
    "9007199254740992",
    "9007199254740993",
    "-9007199254740993",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "-9223372036854775809",
    "123456789012345678901234567890",
    "5e-324",
    "2.2250738585072014e-308",
    "1.7976931348623157e308",
    "1.7976931348623159e308",
    "-0.0",
    "0e0",
    "01",
    "1.",
    "-",
    "+1",
    ".5",
    "1e",
    "NaN",
    "Infinity",
    "-Infinity",
    "1.000000000000000000000",
    "1e0000000002",
    "1000000000000000000",
    "100000000000000000000",
    "1e23",
];

fn generated_body(rng: &mut StdRng) -> Vec<u8> {
    let mut body = Vec::new();
    if rng.random_bool(0.6) {
        // A tools/call envelope around generated arguments.
        body.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
        number(rng, &mut body);
        body.extend_from_slice(br#","method":"tools/call","params":{"name":"#);
        string(rng, &mut body);
        body.extend_from_slice(br#","arguments":"#);
        value(rng, &mut body, 0);
        if rng.random_bool(0.2) {
            body.extend_from_slice(br#","name":"list_deployments""#);
        }
        body.extend_from_slice(b"}}");
    } else {
        value(rng, &mut body, 0);
    }
    mutate(rng, &mut body);
    body
}

fn value(rng: &mut StdRng, out: &mut Vec<u8>, depth: usize) {
    let scalar_only = depth >= 6;
    match rng.random_range(0..if scalar_only { 6 } else { 9 }) {
        0 | 1 => number(rng, out),
        2 | 3 => string(rng, out),
        4 => out.extend_from_slice([&b"true"[..], b"false", b"null"].choose(rng).unwrap()),
        5 => deep_nesting(rng, out),
        6 => array(rng, out, depth),
        _ => object(rng, out, depth),
    }
}

fn object(rng: &mut StdRng, out: &mut Vec<u8>, depth: usize) {
    out.push(b'{');
    let members = rng.random_range(0..5);
    let mut used: Vec<&str> = Vec::new();
    for i in 0..members {
        if i > 0 {
            out.push(b',');
        }
        let key = match used.choose(rng) {
            Some(&again) if rng.random_bool(0.25) => again,
            _ => KEYS.choose(rng).unwrap(),
        };
        used.push(key);
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        value(rng, out, depth + 1);
    }
    out.push(b'}');
}

fn array(rng: &mut StdRng, out: &mut Vec<u8>, depth: usize) {
    out.push(b'[');
    for i in 0..rng.random_range(0..5) {
        if i > 0 {
            out.push(b',');
        }
        value(rng, out, depth + 1);
    }
    out.push(b']');
}

/// Around the depth limit (64): some pass, some are too deep.
fn deep_nesting(rng: &mut StdRng, out: &mut Vec<u8>) {
    if !rng.random_bool(0.1) {
        return number(rng, out);
    }
    let levels = rng.random_range(50..80);
    out.extend(std::iter::repeat_n(b'[', levels));
    number(rng, out);
    out.extend(std::iter::repeat_n(b']', levels));
}

fn string(rng: &mut StdRng, out: &mut Vec<u8>) {
    out.push(b'"');
    for _ in 0..rng.random_range(0..4) {
        if rng.random_bool(0.5) {
            out.extend_from_slice(b"plain");
        } else {
            out.extend_from_slice(STRING_PIECES.choose(rng).unwrap());
        }
    }
    out.push(b'"');
}

fn number(rng: &mut StdRng, out: &mut Vec<u8>) {
    if rng.random_bool(0.5) {
        return out.extend_from_slice(NUMBERS.choose(rng).unwrap().as_bytes());
    }
    // A composed literal: sign, digits, fraction, exponent.
    if rng.random_bool(0.3) {
        out.push(b'-');
    }
    let digits = |rng: &mut StdRng, out: &mut Vec<u8>, n: usize| {
        for _ in 0..n {
            out.push(b'0' + rng.random_range(0..10u8));
        }
    };
    if rng.random_bool(0.2) {
        out.push(b'0');
    } else {
        out.push(b'1' + rng.random_range(0..9u8));
        let n = rng.random_range(0..22);
        digits(rng, out, n);
    }
    if rng.random_bool(0.5) {
        out.push(b'.');
        let n = rng.random_range(1..22);
        digits(rng, out, n);
    }
    if rng.random_bool(0.3) {
        out.push(*[b'e', b'E'].choose(rng).unwrap());
        if rng.random_bool(0.5) {
            out.push(*[b'+', b'-'].choose(rng).unwrap());
        }
        out.extend_from_slice(rng.random_range(0..400).to_string().as_bytes());
    }
}

/// Whole-document damage: BOM, trailing bytes, odd whitespace, truncation.
fn mutate(rng: &mut StdRng, body: &mut Vec<u8>) {
    match rng.random_range(0..40) {
        0 => body.splice(0..0, *b"\xef\xbb\xbf").for_each(drop),
        1 => body.extend_from_slice(b" x"),
        2 => body.extend_from_slice(b"{}"),
        3 => body.push(0),
        4 => body.extend_from_slice(b"\r\n\t "),
        5 => body.splice(0..0, *b"\x0c").for_each(drop),
        6 => body.extend_from_slice("\u{a0}".as_bytes()),
        7 if body.len() > 1 => {
            let keep = rng.random_range(1..body.len());
            body.truncate(keep);
        }
        _ => {}
    }
}
