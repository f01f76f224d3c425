//! The strict reading, case by case: what is accepted, what is refused and where.

use super::*;
use serde_json::json;

fn strict(text: &str) -> Result<Value, StrictJsonError> {
    parse(text.as_bytes(), Limits::default())
}

fn refused(bytes: &[u8]) -> StrictJsonError {
    match parse(bytes, Limits::default()) {
        Ok(value) => panic!("accepted {:?} as {value}", String::from_utf8_lossy(bytes)),
        Err(error) => error,
    }
}

fn reason(text: &str) -> &'static str {
    refused(text.as_bytes()).reason()
}

fn pointer_of(text: &str) -> String {
    refused(text.as_bytes())
        .location()
        .expect("has a location")
        .pointer
        .clone()
}

/// Accepted, and read exactly as serde_json reads it.
fn accepted(text: &str) -> Value {
    let value = strict(text).unwrap_or_else(|e| panic!("refused {text:?}: {e}"));
    let plain: Value = serde_json::from_str(text).expect("serde_json reads it too");
    assert_eq!(value, plain, "{text}");
    value
}

#[test]
fn a_typical_tool_call_is_read_exactly_as_serde_json_reads_it() {
    let body = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call",
            "params":{"name":"deploy","arguments":{"service":"payments","env":"prod",
            "replicas":3,"ratio":0.25,"dry_run":false,"tags":["a","b"],"note":null}}}"#;
    let value = accepted(body);
    assert_eq!(value["params"]["arguments"]["ratio"], json!(0.25));
}

#[test]
fn duplicate_top_level_key_is_refused_with_its_pointer() {
    let error = refused(br#"{"a":1,"a":2}"#);
    assert_eq!(error.reason(), "duplicate_key");
    assert_eq!(error.location().unwrap().pointer, "/a");
    assert!(!error.is_parse_error());
    assert_eq!(error.jsonrpc_code(), -32600);
}

#[test]
fn duplicate_tool_name_deep_in_params_is_refused_with_its_pointer() {
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":
            {"name":"delete_repository","arguments":{},"name":"list_deployments"}}"#;
    assert_eq!(reason(body), "duplicate_key");
    assert_eq!(pointer_of(body), "/params/name");
}

#[test]
fn two_arguments_objects_are_refused_whatever_they_contain() {
    let body =
        r#"{"params":{"name":"deploy","arguments":{"env":"dev"},"arguments":{"env":"prod"}}}"#;
    assert_eq!(pointer_of(body), "/params/arguments");
}

#[test]
fn keys_are_compared_after_unescaping() {
    assert_eq!(reason(r#"{"a":1,"\u0061":2}"#), "duplicate_key");
    assert_eq!(reason(r#"{"name":1,"n\u0061me":2}"#), "duplicate_key");
    assert_eq!(reason(r#"{"\/":1,"/":2}"#), "duplicate_key");
    assert_eq!(reason(r#"{"😀":1,"\ud83d\ude00":2}"#), "duplicate_key");
    // Different characters stay different keys (no Unicode normalisation).
    accepted(r#"{"a":1,"b":2,"\u00e9":3,"e\u0301":4}"#);
}

#[test]
fn keys_differing_only_in_letter_case_are_refused_with_the_later_key() {
    let body =
        r#"{"params":{"name":"list_deployments","arguments":{},"NAME":"delete_repository"}}"#;
    let error = refused(body.as_bytes());
    assert_eq!(error.reason(), "case_variant_key");
    assert_eq!(error.location().unwrap().pointer, "/params/NAME");
    assert!(!error.is_parse_error());
    for body in [
        r#"{"Name":1,"name":2}"#,
        r#"{"Name":1,"nAme":2}"#,
        r#"{"k":1,"\u212a":2}"#, // Kelvin sign
        r#"{"s":1,"\u017f":2}"#, // long s
        r#"{"\u00c9":1,"\u00e9":2}"#,
        r#"{"x":{"Id":1,"ID":2}}"#,
    ] {
        assert_eq!(reason(body), "case_variant_key", "{body}");
    }
    // The first clash in document order decides the reason.
    assert_eq!(reason(r#"{"Id":1,"id":2,"Id":3}"#), "case_variant_key");
    assert_eq!(reason(r#"{"Id":1,"Id":2}"#), "duplicate_key");
    // The same key in different objects is fine, and so are keys of different letters.
    accepted(r#"{"progressToken":1,"meta":{"progressToken":2},"Name":3,"Nam":4}"#);
}

#[test]
fn case_variant_keys_are_accepted_when_the_check_is_off() {
    let limits = Limits {
        refuse_case_variant_keys: false,
        ..Limits::default()
    };
    let value = parse(br#"{"name":1,"NAME":2}"#, limits).expect("accepted");
    assert_eq!(value, json!({"name": 1, "NAME": 2}));
    assert_eq!(
        parse(br#"{"name":1,"name":2}"#, limits)
            .unwrap_err()
            .reason(),
        "duplicate_key"
    );
}

#[test]
fn duplicate_keys_inside_arrays_carry_the_index_in_the_pointer() {
    assert_eq!(pointer_of(r#"{"x":[{"k":1},{"k":1,"k":1}]}"#), "/x/1/k");
}

#[test]
fn pointers_escape_slash_and_tilde_and_never_show_values() {
    let error = refused(br#"{"a/b~c":{"secret-value":"hunter2","secret-value":"x"}}"#);
    assert_eq!(error.location().unwrap().pointer, "/a~1b~0c/secret-value");
    let message = error.to_string();
    assert!(!message.contains("hunter2"), "{message}");
    assert!(message.contains("/a~1b~0c/secret-value"), "{message}");
}

#[test]
fn long_and_control_character_keys_are_shortened_and_escaped_in_pointers() {
    let key = "k".repeat(1000);
    let error = refused(format!(r#"{{"{key}":[1,-0]}}"#).as_bytes());
    let pointer = &error.location().unwrap().pointer;
    assert!(pointer.chars().count() < 80, "{pointer}");
    assert!(pointer.ends_with("…/1"), "{pointer}");
    let error = refused(br#"{"a\nb":1,"a\nb":2}"#);
    assert_eq!(error.location().unwrap().pointer, "/a\\u{a}b");
}

#[test]
fn values_of_strings_and_numbers_never_appear_in_messages() {
    for body in [
        r#"{"token":"s3cr3t-\ud800"}"#,
        r#"{"pin":123456789012345678901234}"#,
        r#"{"pin":0.12345678901234567890}"#,
        "{\"token\":\"s3cr3t-\u{1}\"}",
        r#"{"token":"s3cr3t\u0000"}"#,
    ] {
        let message = refused(body.as_bytes()).to_string();
        for secret in ["s3cr3t", "12345678"] {
            assert!(!message.contains(secret), "{message}");
        }
    }
}

#[test]
fn invalid_utf8_in_a_string_is_refused_as_a_parse_error() {
    for bytes in [
        &b"{\"a\":\"\xff\"}"[..],
        b"{\"a\":\"\xc0\xaf\"}",     // overlong '/'
        b"{\"a\":\"\xed\xa0\x80\"}", // a surrogate encoded in UTF-8
        b"{\"\xe2\x82\":1}",         // truncated sequence in a key
    ] {
        let error = refused(bytes);
        assert_eq!(error.reason(), "invalid_utf8", "{bytes:?}");
        assert!(error.is_parse_error());
        assert_eq!(error.jsonrpc_code(), -32700);
    }
    // Outside strings any non-ASCII byte is plain bad syntax.
    assert_eq!(refused(b"[1,\xff]").reason(), "syntax");
}

#[test]
fn lone_surrogate_escapes_are_refused() {
    for body in [
        r#"["\ud800"]"#,
        r#"["\udc00"]"#,
        r#"["\ud800x"]"#,
        r#"["\ud800\n"]"#,
        r#"["\ud800\u0041"]"#,
        r#"["\ud800\ud800"]"#,
        r#"["\udfff\ud800"]"#,
        r#"{"\ud83d":1}"#,
    ] {
        assert_eq!(reason(body), "lone_surrogate", "{body}");
    }
    assert_eq!(pointer_of(r#"{"a":{"b":"\ud800"}}"#), "/a/b");
    assert!(!refused(br#"["\ud800"]"#).is_parse_error());
    accepted(r#"["\ud83d\ude00","\uD83D\uDE00","\uffff","\ufffe","\ufdd0","\udbff\udfff"]"#);
}

#[test]
fn escaped_nul_is_refused_in_values_and_keys_other_escapes_are_fine() {
    assert_eq!(reason(r#"{"env":"dev\u0000prod"}"#), "nul_character");
    assert_eq!(pointer_of(r#"{"env":"dev\u0000prod"}"#), "/env");
    assert_eq!(reason(r#"{"a\u0000":1}"#), "nul_character");
    accepted(r#"["\u0001\u001f\u007f\b\f\n\r\t\"\\\/"]"#);
}

#[test]
fn raw_control_characters_in_strings_are_refused() {
    for byte in 0u8..0x20 {
        let body = [b'"', b'a', byte, b'"'];
        let error = refused(&body);
        assert_eq!(error.reason(), "control_character", "{byte:#x}");
        assert!(error.is_parse_error());
    }
    // DEL and C1 controls are not JSON control characters.
    accepted("[\"\u{7f}\u{85}\"]");
}

#[test]
fn a_byte_order_mark_is_refused() {
    let error = refused(b"\xEF\xBB\xBF{\"a\":1}");
    assert_eq!(error, StrictJsonError::Bom);
    assert_eq!(error.reason(), "bom");
    assert!(error.is_parse_error());
    assert!(error.location().is_none());
    // A BOM inside a string is just a character.
    accepted("[\"\u{feff}\"]");
}

#[test]
fn trailing_bytes_after_the_value_are_refused_but_whitespace_is_fine() {
    for body in [
        r#"{"a":1}x"#,
        r#"{"a":1}{"a":2}"#,
        "1 2",
        "{}\u{0}",
        "[]\u{a0}",
    ] {
        assert_eq!(reason(body), "trailing_bytes", "{body:?}");
    }
    assert!(refused(b"{} {}").is_parse_error());
    accepted(" \t\r\n{\"a\":1} \t\r\n");
    // Form feed and other Unicode spaces are not JSON whitespace.
    assert_eq!(reason("\u{c}{}"), "syntax");
}

#[test]
fn syntax_errors_are_parse_errors_with_a_place() {
    for body in [
        "",
        " ",
        "{",
        "{\"a\"}",
        "{\"a\":1,}",
        "[1,]",
        "[01]",
        "[1.]",
        "[.5]",
        "[+1]",
        "[NaN]",
        "[Infinity]",
        "[-Infinity]",
        "{'a':1}",
        "{a:1}",
        "[1e]",
        "[\"\\x\"]",
        "/* c */ {}",
        "[tru]",
        "\"\\u12\"",
    ] {
        let error = refused(body.as_bytes());
        assert_eq!(error.reason(), "syntax", "{body:?}");
        assert!(error.is_parse_error());
        assert!(error.location().is_some());
    }
    let error = refused(b"{\"a\":\n  [1 2]}");
    let at = error.location().unwrap();
    assert_eq!((at.pointer.as_str(), at.line), ("/a/1", 2));
}

#[test]
fn integers_beyond_i64_and_u64_are_refused() {
    for body in [
        "18446744073709551616",
        "-9223372036854775809",
        "123456789012345678901234567890",
        "[100000000000000000000]",
    ] {
        let error = refused(body.as_bytes());
        assert_eq!(error.reason(), "lossy_number", "{body}");
        assert!(matches!(
            error,
            StrictJsonError::LossyNumber {
                problem: NumberProblem::IntegerOutOfRange,
                ..
            }
        ));
        assert!(!error.is_parse_error());
    }
}

#[test]
fn integers_a_double_reader_would_change_are_refused() {
    // 2^53 + 1 reads as 2^53 in JavaScript; u64::MAX reads as 2^64; the next one
    // prints back unchanged as a double but is held as 67994450833874928; 2^60 is
    // held exactly but printed back as 1152921504606847000.
    for body in [
        "9007199254740993",
        "-9007199254740993",
        "18446744073709551615",
        "67994450833874930",
        "1152921504606846976",
    ] {
        assert!(
            matches!(
                refused(body.as_bytes()),
                StrictJsonError::LossyNumber {
                    problem: NumberProblem::ChangesAsDouble,
                    ..
                }
            ),
            "{body}"
        );
    }
    // Up to 2^53 every integer is exact; beyond, those with a short exact form are fine.
    for body in [
        "9007199254740992",
        "-9007199254740992",
        "1000000000000000000",
        "0",
        "-1",
    ] {
        accepted(body);
    }
}

#[test]
fn non_integers_that_change_as_doubles_are_refused() {
    for body in [
        "0.10000000000000000001",
        "1.00000000000000001",
        "0.1000000000000000055511151231257827021181583404541015625",
        "1e-400",
        "-1e-400",
        "2.4703282292062327e-324",
        "[1.7976931348623159e308]",
    ] {
        let error = refused(body.as_bytes());
        assert_eq!(error.reason(), "lossy_number", "{body}");
    }
    assert_eq!(
        pointer_of(r#"{"a":[1,2,{"b":0.10000000000000000001}]}"#),
        "/a/2/b"
    );
}

#[test]
fn numbers_beyond_the_double_range_are_refused() {
    for body in ["1e400", "-1e400", "1e99999999999999999999999", "[1.8e308]"] {
        let error = refused(body.as_bytes());
        assert!(
            matches!(
                error,
                StrictJsonError::LossyNumber {
                    problem: NumberProblem::OutOfRange,
                    ..
                }
            ),
            "{body}: {error:?}"
        );
    }
    assert_eq!(pointer_of(r#"{"x":{"y":1e400}}"#), "/x/y");
}

#[test]
fn negative_zero_is_refused_in_every_spelling() {
    for body in ["-0", "-0.0", "-0e5", "-0E-3", "[-0.000]", "{\"a\":-0}"] {
        assert!(
            matches!(
                refused(body.as_bytes()),
                StrictJsonError::LossyNumber {
                    problem: NumberProblem::NegativeZero,
                    ..
                }
            ),
            "{body}"
        );
    }
}

#[test]
fn numbers_that_survive_a_double_round_trip_are_accepted_in_any_spelling() {
    for body in [
        "1.0",
        "1",
        "1E2",
        "1e2",
        "1e+2",
        "100e0",
        "1E-2",
        "0.1",
        "0.30000000000000004",
        "1.000000000000000000000",
        "0.0",
        "0e0",
        "0e-400",
        "0e999999999999999999",
        "1e0000000002",
        "1.7976931348623157e308",
        "5e-324",
        "2.2250738585072014e-308",
        "1e23",
        "-1.5",
        "123.456e-7",
        "9007199254740993.0e-16",
    ] {
        accepted(body);
    }
    // `1.0` keeps serde's float representation: compare numbers by value.
    assert_eq!(accepted("1.0").as_f64(), Some(1.0));
    assert!(accepted("1.0").is_f64() && accepted("1").is_u64());
}

#[test]
fn very_long_digit_strings_are_judged_by_value() {
    let zeros = "0".repeat(100_000);
    accepted(&format!("1.{zeros}"));
    accepted(&format!("0.{zeros}1e100001"));
    assert_eq!(reason(&format!("1.{zeros}1")), "lossy_number");
    assert_eq!(reason(&format!("1{zeros}")), "lossy_number");
}

#[test]
fn floats_after_many_strings_and_integers_are_each_checked_against_their_own_text() {
    // Keys and strings full of digits and quotes must not confuse the literal scan.
    let body = r#"{"1.5":"2.5\"3e9\\","n":[7,-8,"-0",0.5,{"9":1e2}],"z":0.10000000000000000001}"#;
    assert_eq!(pointer_of(body), "/z");
    accepted(r#"{"1.5":"2.5\"3e9\\","n":[7,-8,"-0",0.5,{"9":1e2}],"z":0.1}"#);
}

#[test]
fn nesting_up_to_the_limit_is_accepted_and_one_deeper_is_refused() {
    let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let limits = Limits {
        max_depth: 5,
        ..Limits::default()
    };
    assert!(parse(nested(5).as_bytes(), limits).is_ok());
    let error = parse(nested(6).as_bytes(), limits).unwrap_err();
    assert_eq!(error.reason(), "too_deep");
    assert_eq!(error.location().unwrap().pointer, "/0/0/0/0/0");
    assert!(matches!(error, StrictJsonError::TooDeep { limit: 5, .. }));
    assert!(!error.is_parse_error());
    let zero = Limits {
        max_depth: 0,
        ..Limits::default()
    };
    assert!(parse(b"\"scalar\"", zero).is_ok());
    assert_eq!(parse(b"{}", zero).unwrap_err().reason(), "too_deep");
    let objects = format!("{}1{}", r#"{"a":"#.repeat(65), "}".repeat(65));
    assert_eq!(reason(&objects), "too_deep");
}

#[test]
fn limits_above_the_ceiling_stop_at_the_ceiling() {
    let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let limits = Limits {
        max_depth: usize::MAX,
        ..Limits::default()
    };
    assert!(parse(nested(Limits::DEPTH_CEILING).as_bytes(), limits).is_ok());
    let error = parse(nested(Limits::DEPTH_CEILING + 1).as_bytes(), limits).unwrap_err();
    assert!(
        matches!(
            error,
            StrictJsonError::TooDeep {
                limit: Limits::DEPTH_CEILING,
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn a_megabyte_of_open_brackets_is_refused_without_exhausting_the_stack() {
    // A quarter of a tokio worker stack (2 MiB): unbounded recursion would crash here.
    let handle = std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(|| {
            let brackets = vec![b'['; 1 << 20];
            let braces = r#"{"a":"#.repeat(200_000);
            let limits = Limits {
                max_depth: usize::MAX,
                ..Limits::default()
            };
            (
                parse(&brackets, Limits::default()).unwrap_err().reason(),
                parse(&brackets, limits).unwrap_err().reason(),
                parse(braces.as_bytes(), limits).unwrap_err().reason(),
            )
        })
        .expect("spawn");
    assert_eq!(
        handle.join().expect("no overflow"),
        ("too_deep", "too_deep", "too_deep")
    );
}

#[test]
fn every_reason_code_is_distinct_and_stable() {
    let samples: Vec<StrictJsonError> = [
        &b"{"[..],
        b"\xEF\xBB\xBF1",
        b"\"\xff\"",
        b"\"\x01\"",
        b"1 1",
        br#"{"a":1,"a":1}"#,
        br#"{"a":1,"A":1}"#,
        br#""\ud800""#,
        br#""\u0000""#,
        b"1e400",
        &[b'['; 100],
    ]
    .iter()
    .map(|bytes| refused(bytes))
    .collect();
    let reasons: Vec<&str> = samples.iter().map(StrictJsonError::reason).collect();
    assert_eq!(
        reasons,
        [
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
        ]
    );
    let parse_errors: Vec<bool> = samples
        .iter()
        .map(StrictJsonError::is_parse_error)
        .collect();
    assert_eq!(
        parse_errors,
        [
            true, true, true, true, true, false, false, false, false, false, false
        ]
    );
}

#[test]
fn either_shortest_form_of_a_halfway_double_is_accepted() {
    // 900719925474209.25 has two 16-digit shortest forms; writers pick either.
    for body in [
        "900719925474209.3",
        "900719925474209.2",
        "[900719925474209.3]",
    ] {
        accepted(body);
    }
    let value = accepted("900719925474209.3");
    let again = serde_json::to_vec(&value).expect("serialise");
    assert_eq!(parse(&again, Limits::default()), Ok(value));
    // Longer spellings of the same double still change the decimal value.
    assert_eq!(reason("900719925474209.25"), "lossy_number");
    assert_eq!(reason("900719925474209.31"), "lossy_number");
}

#[test]
fn a_number_followed_by_number_characters_is_a_syntax_error_not_a_panic() {
    // Fuzzing found these: the literal scan ran on into `-00` and the exponent
    // arithmetic underflowed on the `-`.
    assert_eq!(reason("0.01e40-00"), "trailing_bytes");
    assert_eq!(reason("1e40-9223372036854775809"), "trailing_bytes");
    assert_eq!(reason("[1.5-3]"), "syntax");
    assert_eq!(reason("[1.5e3.2]"), "syntax");
    assert_eq!(reason("[1e+5+]"), "syntax");
    assert_eq!(number_length(b"-12.5e+3,"), 8);
    assert_eq!(number_length(b"0.01e40-00"), 7);
}

#[test]
fn decimals_are_normalised_before_comparison() {
    fn d(s: &str) -> Decimal<'_> {
        parse_decimal(s.as_bytes())
    }
    assert_eq!(d("100"), d("1e2"));
    assert_eq!(d("1.2345e3"), d("1234.5"));
    assert_eq!(d("0.00120"), d("1.2e-3"));
    assert_eq!(d("-0"), d("0e7"));
    assert_ne!(d("1"), d("-1"));
    assert_ne!(d("12"), d("1.2"));
    assert_eq!(d("1e99999999999999999999").exponent, 1 << 40);
}
