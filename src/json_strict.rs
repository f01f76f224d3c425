//! One reading of every inspected JSON body: parses bytes into a `serde_json::Value`
//! and refuses any text that two JSON parsers could read differently (duplicate keys,
//! lossy numbers, lone surrogates, BOM, trailing bytes, ...), so the value the policy
//! checks is the value every downstream reader sees. Never echoes string or number
//! values in its errors: they may be secrets.
//!
//! What is accepted, and why (the text is forwarded as-is, so the rule is "every
//! reasonable reader gets the same value"):
//! - Grammar is RFC 8259, enforced by serde_json: no comments, `NaN`, single quotes,
//!   trailing commas, raw control characters in strings; whitespace is `\t \n \r` and
//!   space only; nothing but whitespace may follow the value; no UTF-8 byte order mark.
//! - Object keys are compared after unescaping (`"a"` and `"\u0061"` are one key); a
//!   key seen twice in one object is refused at any depth. So are keys that differ
//!   only in letter case (`"name"` and `"NAME"`, `"k"` and the Kelvin sign `"\u212a"`):
//!   readers that bind keys to fields case-insensitively (Go's encoding/json, ASP.NET
//!   Core's web defaults) read them as one key, the last one winning. Folding is
//!   Unicode upper-then-lower case, slightly wider than Go's simple folding (`"ß"`
//!   matches `"ss"`); `Limits::refuse_case_variant_keys` turns this check off.
//! - Strings must be valid UTF-8 and escapes must not leave a lone surrogate.
//!   `\u0000` is refused too: readers built on C strings cut the string there.
//!   Noncharacters (U+FFFE, U+FDD0, ...) are accepted: they are Unicode scalar values
//!   every UTF-8 / UTF-16 reader decodes the same way.
//! - A number is accepted only if it survives a round trip through an IEEE 754 double:
//!   read as the nearest double and written back in shortest form, it must denote the
//!   same decimal value. So `1.0`, `1E2`, `1e+2`, `0.1`, `0.30000000000000004` and
//!   `1.000000000000000000000` (trailing zeros carry no value) are accepted;
//!   `0.10000000000000000001`, `1e400`, `1e-400` and `9007199254740993` (2^53 + 1,
//!   which a JavaScript reader turns into 2^53) are refused. Integer literals must also
//!   fit in i64 / u64, and beyond 2^53 they must be exact doubles as well: an integer
//!   reader and a double reader then hold the same integer. `-0` (in any spelling, `-0.0`, `-0e5`) is refused: some readers
//!   keep the sign, others (integer readers, Python's `-0`) drop it. `1.0` and `1` are
//!   both accepted and denote the same number, but the returned `Value` keeps serde's
//!   representation (`1.0` is an f64, `1` a u64): compare numbers by value, not by
//!   `Value` equality. Exponents and long digit strings are fine as long as the value
//!   survives (`1e0000000002` is 100); there is no separate length limit, the work is
//!   linear in the input.
//! - Nesting is capped by `Limits::max_depth`, checked while parsing without unbounded
//!   recursion (serde_json itself also stops at `Limits::DEPTH_CEILING`).
//!
//! For any accepted input the returned `Value` equals `serde_json::from_slice::<Value>`.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};

/// What the parser tolerates beyond the JSON grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deepest nesting of arrays and objects: `1` allows `{"a":1}` but not `{"a":[]}`.
    /// Values above `DEPTH_CEILING` act as `DEPTH_CEILING`.
    pub max_depth: usize,
    /// Refuse objects whose keys differ only in letter case (on by default).
    pub refuse_case_variant_keys: bool,
}

impl Limits {
    /// serde_json's own recursion limit: it refuses the 128th nested container.
    pub const DEPTH_CEILING: usize = 127;

    fn effective_depth(self) -> usize {
        self.max_depth.min(Self::DEPTH_CEILING)
    }
}

impl Default for Limits {
    /// 64 levels: far more than any tool call needs, far less than the stack allows.
    fn default() -> Self {
        Limits {
            max_depth: 64,
            refuse_case_variant_keys: true,
        }
    }
}

/// Where in the body a problem is: a JSON pointer (RFC 6901) to the value or member
/// concerned, plus serde_json's line and column. The pointer names keys, never values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// `""` is the whole document; `/params/name` the member `name` of `params`.
    pub pointer: String,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pointer = if self.pointer.is_empty() {
            "the top level"
        } else {
            &self.pointer
        };
        write!(f, "{pointer} (line {}, column {})", self.line, self.column)
    }
}

/// Why a number was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberProblem {
    /// An integer literal beyond i64 / u64.
    IntegerOutOfRange,
    /// Beyond the range of a double (`1e400`).
    OutOfRange,
    /// Reading it as a double and writing it back gives another value.
    ChangesAsDouble,
    /// `-0`, `-0.0`, ...: readers disagree on whether the sign survives.
    NegativeZero,
}

impl fmt::Display for NumberProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NumberProblem::IntegerOutOfRange => "integer beyond the 64-bit range",
            NumberProblem::OutOfRange => "beyond the range of a double",
            NumberProblem::ChangesAsDouble => "its value changes when read as a double",
            NumberProblem::NegativeZero => "negative zero",
        })
    }
}

/// A body refused by [`parse`]. One variant per class; `reason()` is a stable code for
/// answers, evidence and metric labels.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StrictJsonError {
    #[error("not JSON: syntax error at {at}")]
    Syntax { at: Location },
    #[error("not JSON: the body starts with a UTF-8 byte order mark")]
    Bom,
    #[error("not JSON: invalid UTF-8 in a string at {at}")]
    InvalidUtf8 { at: Location },
    #[error("not JSON: unescaped control character in a string at {at}")]
    ControlCharacter { at: Location },
    #[error("not JSON: bytes after the JSON value at {at}")]
    TrailingBytes { at: Location },
    #[error("ambiguous JSON: duplicate key at {at}")]
    DuplicateKey { at: Location },
    #[error("ambiguous JSON: key at {at} differs from another key only in letter case")]
    CaseVariantKey { at: Location },
    #[error("ambiguous JSON: lone surrogate escape in a string at {at}")]
    LoneSurrogate { at: Location },
    #[error("ambiguous JSON: \\u0000 in a string at {at}")]
    NulCharacter { at: Location },
    #[error("ambiguous JSON: number at {at} refused: {problem}")]
    LossyNumber {
        at: Location,
        problem: NumberProblem,
    },
    #[error("JSON nested deeper than {limit} levels at {at}")]
    TooDeep { at: Location, limit: usize },
}

impl StrictJsonError {
    /// Stable machine-readable code of the class.
    pub fn reason(&self) -> &'static str {
        match self {
            StrictJsonError::Syntax { .. } => "syntax",
            StrictJsonError::Bom => "bom",
            StrictJsonError::InvalidUtf8 { .. } => "invalid_utf8",
            StrictJsonError::ControlCharacter { .. } => "control_character",
            StrictJsonError::TrailingBytes { .. } => "trailing_bytes",
            StrictJsonError::DuplicateKey { .. } => "duplicate_key",
            StrictJsonError::CaseVariantKey { .. } => "case_variant_key",
            StrictJsonError::LoneSurrogate { .. } => "lone_surrogate",
            StrictJsonError::NulCharacter { .. } => "nul_character",
            StrictJsonError::LossyNumber { .. } => "lossy_number",
            StrictJsonError::TooDeep { .. } => "too_deep",
        }
    }

    /// True when the bytes are not RFC 8259 JSON text at all (JSON-RPC -32700, Parse
    /// error); false when they are JSON this gateway refuses to interpret (-32600,
    /// Invalid Request).
    pub fn is_parse_error(&self) -> bool {
        matches!(
            self,
            StrictJsonError::Syntax { .. }
                | StrictJsonError::Bom
                | StrictJsonError::InvalidUtf8 { .. }
                | StrictJsonError::ControlCharacter { .. }
                | StrictJsonError::TrailingBytes { .. }
        )
    }

    /// The JSON-RPC 2.0 error code for an answer to this body.
    pub fn jsonrpc_code(&self) -> i64 {
        if self.is_parse_error() {
            -32700
        } else {
            -32600
        }
    }

    /// Where the problem is, when it has a place (the BOM is always at the start).
    pub fn location(&self) -> Option<&Location> {
        match self {
            StrictJsonError::Bom => None,
            StrictJsonError::Syntax { at }
            | StrictJsonError::InvalidUtf8 { at }
            | StrictJsonError::ControlCharacter { at }
            | StrictJsonError::TrailingBytes { at }
            | StrictJsonError::DuplicateKey { at }
            | StrictJsonError::CaseVariantKey { at }
            | StrictJsonError::LoneSurrogate { at }
            | StrictJsonError::NulCharacter { at }
            | StrictJsonError::LossyNumber { at, .. }
            | StrictJsonError::TooDeep { at, .. } => Some(at),
        }
    }
}

/// Parses `bytes` as one JSON value, refusing anything two parsers could read
/// differently (see the module documentation for the exact rules).
pub fn parse(bytes: &[u8], limits: Limits) -> Result<Value, StrictJsonError> {
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    if bytes.starts_with(BOM) {
        return Err(StrictJsonError::Bom);
    }
    let mut reader = Reader {
        input: bytes,
        max_depth: limits.effective_depth(),
        refuse_case_variant_keys: limits.refuse_case_variant_keys,
        refusal: None,
        reversed_path: Vec::new(),
        numbers_seen: 0,
        literals: LiteralScanner::default(),
    };
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = StrictSeed {
        reader: &mut reader,
        depth: 0,
    }
    .deserialize(&mut deserializer)
    .and_then(|value| deserializer.end().map(|()| value));
    parsed.map_err(|error| reader.into_error(&error))
}

/// Our own refusals; serde_json's errors are classified in `Reader::into_error`.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    DuplicateKey,
    CaseVariantKey,
    NulCharacter,
    LossyNumber(NumberProblem),
    TooDeep,
}

enum Segment {
    Key(String),
    Index(usize),
}

/// State shared by the seeds of one parse.
struct Reader<'a> {
    input: &'a [u8],
    max_depth: usize,
    refuse_case_variant_keys: bool,
    /// Set when a visitor refuses; serde_json only carries a message back.
    refusal: Option<Refusal>,
    /// Filled while an error unwinds, innermost segment first; empty on success.
    reversed_path: Vec<Segment>,
    /// Number values seen so far, in document order.
    numbers_seen: usize,
    literals: LiteralScanner,
}

impl Reader<'_> {
    /// Refuses at the current place; the caller returns the error at once.
    fn refuse<E: de::Error>(&mut self, refusal: Refusal) -> E {
        self.refusal = Some(refusal);
        E::custom("refused")
    }

    fn into_error(self, error: &serde_json::Error) -> StrictJsonError {
        let at = Location {
            pointer: pointer(&self.reversed_path),
            line: error.line(),
            column: error.column(),
        };
        match self.refusal {
            Some(Refusal::DuplicateKey) => StrictJsonError::DuplicateKey { at },
            Some(Refusal::CaseVariantKey) => StrictJsonError::CaseVariantKey { at },
            Some(Refusal::NulCharacter) => StrictJsonError::NulCharacter { at },
            Some(Refusal::LossyNumber(problem)) => StrictJsonError::LossyNumber { at, problem },
            Some(Refusal::TooDeep) => StrictJsonError::TooDeep {
                at,
                limit: self.max_depth,
            },
            None => classify_serde_error(error, at, self.max_depth),
        }
    }

    /// Checks the `index`-th number of the document, which serde_json read as `value`.
    fn check_float(&mut self, value: f64) -> Result<(), NumberProblem> {
        let index = self.numbers_seen - 1;
        // Serde has validated the input up to and including this number, so the scanner
        // only ever walks well-formed JSON.
        let Some(literal) = self.literals.nth_literal(self.input, index) else {
            // Unreachable for input serde accepted; refuse rather than guess.
            return Err(NumberProblem::ChangesAsDouble);
        };
        check_float_literal(literal, value)
    }
}

/// serde_json reports its own errors only as text; the codes below are its stable
/// `ErrorCode` messages. Anything unrecognised is a syntax error (still a refusal).
fn classify_serde_error(
    error: &serde_json::Error,
    at: Location,
    max_depth: usize,
) -> StrictJsonError {
    let message = error.to_string();
    let has = |code: &str| message.starts_with(code);
    if has("trailing characters") {
        StrictJsonError::TrailingBytes { at }
    } else if has("control character") {
        StrictJsonError::ControlCharacter { at }
    } else if has("invalid unicode code point") {
        StrictJsonError::InvalidUtf8 { at }
    } else if has("lone leading surrogate") || has("unexpected end of hex escape") {
        StrictJsonError::LoneSurrogate { at }
    } else if has("number out of range") {
        StrictJsonError::LossyNumber {
            at,
            problem: NumberProblem::OutOfRange,
        }
    } else if has("recursion limit exceeded") {
        StrictJsonError::TooDeep {
            at,
            limit: max_depth,
        }
    } else {
        StrictJsonError::Syntax { at }
    }
}

/// Longest key text kept in a pointer: a hostile key must not bloat logs.
const MAX_SEGMENT_CHARS: usize = 64;

fn pointer(reversed: &[Segment]) -> String {
    let mut out = String::new();
    for segment in reversed.iter().rev() {
        out.push('/');
        match segment {
            Segment::Index(index) => out.push_str(&index.to_string()),
            Segment::Key(key) => {
                for (n, c) in key.chars().enumerate() {
                    if n == MAX_SEGMENT_CHARS {
                        out.push('…');
                        break;
                    }
                    match c {
                        '~' => out.push_str("~0"),
                        '/' => out.push_str("~1"),
                        // Keeps log lines on one line and terminals sane.
                        c if c.is_control() => out.extend(c.escape_unicode()),
                        c => out.push(c),
                    }
                }
            }
        }
    }
    out
}

/// Builds a `Value` like serde_json's own visitor, refusing on the way.
struct StrictSeed<'r, 'a> {
    reader: &'r mut Reader<'a>,
    /// Containers around the value about to be read.
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for StrictSeed<'_, '_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl StrictSeed<'_, '_> {
    fn enter_container<E: de::Error>(&mut self) -> Result<usize, E> {
        let inner = self.depth + 1;
        if inner > self.reader.max_depth {
            return Err(self.reader.refuse(Refusal::TooDeep));
        }
        Ok(inner)
    }

    fn string<E: de::Error>(&mut self, text: &str) -> Result<(), E> {
        if memchr::memchr(0, text.as_bytes()).is_some() {
            return Err(self.reader.refuse(Refusal::NulCharacter));
        }
        Ok(())
    }

    fn number<E: de::Error>(&mut self, problem: Option<NumberProblem>) -> Result<(), E> {
        match problem {
            Some(problem) => Err(self.reader.refuse(Refusal::LossyNumber(problem))),
            None => Ok(()),
        }
    }
}

impl<'de> Visitor<'de> for StrictSeed<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_u64<E: de::Error>(mut self, value: u64) -> Result<Value, E> {
        self.reader.numbers_seen += 1;
        self.number(integer_problem(i128::from(value)))?;
        Ok(Value::Number(value.into()))
    }

    fn visit_i64<E: de::Error>(mut self, value: i64) -> Result<Value, E> {
        self.reader.numbers_seen += 1;
        self.number(integer_problem(i128::from(value)))?;
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E: de::Error>(mut self, value: f64) -> Result<Value, E> {
        self.reader.numbers_seen += 1;
        let checked = self.reader.check_float(value);
        self.number(checked.err())?;
        match Number::from_f64(value) {
            Some(number) => Ok(Value::Number(number)),
            None => Err(self
                .reader
                .refuse(Refusal::LossyNumber(NumberProblem::OutOfRange))),
        }
    }

    fn visit_str<E: de::Error>(mut self, value: &str) -> Result<Value, E> {
        self.string(value)?;
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E: de::Error>(mut self, value: String) -> Result<Value, E> {
        self.string(&value)?;
        Ok(Value::String(value))
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Value, A::Error> {
        let depth = self.enter_container()?;
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        loop {
            let seed = StrictSeed {
                reader: &mut *self.reader,
                depth,
            };
            match seq.next_element_seed(seed) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => return Ok(Value::Array(items)),
                Err(error) => {
                    self.reader.reversed_path.push(Segment::Index(items.len()));
                    return Err(error);
                }
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut access: A) -> Result<Value, A::Error> {
        let depth = self.enter_container()?;
        let mut map = Map::new();
        let mut case_folds = CaseFolds::default();
        loop {
            let key_seed = KeySeed {
                reader: &mut *self.reader,
            };
            let Some(key) = access.next_key_seed(key_seed)? else {
                return Ok(Value::Object(map));
            };
            let value_seed = StrictSeed {
                reader: &mut *self.reader,
                depth,
            };
            let value = match access.next_value_seed(value_seed) {
                Ok(value) => value,
                Err(error) => {
                    self.reader.reversed_path.push(Segment::Key(key));
                    return Err(error);
                }
            };
            let case_clash = self.reader.refuse_case_variant_keys && case_folds.clashes(&key, &map);
            let (refusal, key) = match map.entry(key) {
                Entry::Vacant(slot) if !case_clash => {
                    slot.insert(value);
                    continue;
                }
                Entry::Vacant(slot) => (Refusal::CaseVariantKey, slot.key().clone()),
                Entry::Occupied(slot) => (Refusal::DuplicateKey, slot.key().clone()),
            };
            let error = self.reader.refuse(refusal);
            self.reader.reversed_path.push(Segment::Key(key));
            return Err(error);
        }
    }
}

/// Case-folded forms of the keys of one object that have any letter case to fold; keys
/// of lowercase ASCII (nearly all of them) are their own fold and cost nothing here.
#[derive(Default)]
struct CaseFolds {
    folded: Vec<String>,
}

impl CaseFolds {
    /// Whether `key`, not yet in `map`, folds to the same text as a key already there.
    fn clashes(&mut self, key: &str, map: &Map<String, Value>) -> bool {
        let has_case = key.bytes().any(|b| b.is_ascii_uppercase() || !b.is_ascii());
        if !has_case {
            return self.folded.iter().any(|f| f == key);
        }
        let folded: String = key
            .chars()
            .flat_map(char::to_uppercase)
            .flat_map(char::to_lowercase)
            .collect();
        let clash = self.folded.contains(&folded) || map.contains_key(&folded);
        self.folded.push(folded);
        clash
    }
}

/// Reads an object key (already unescaped by serde_json) and refuses `\u0000` in it.
struct KeySeed<'r, 'a> {
    reader: &'r mut Reader<'a>,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_, '_> {
    type Value = String;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_, '_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<String, E> {
        if memchr::memchr(0, key.as_bytes()).is_some() {
            return Err(self.reader.refuse(Refusal::NulCharacter));
        }
        Ok(key.to_owned())
    }
}

/// Integers up to 2^53 are exact in a double. A larger one must be a double exactly
/// (or a double reader holds another integer, even if it prints the same digits, as
/// 67994450833874930 does) and must also be written back with the same digits (2^60 is
/// exact but a double writer prints 1152921504606847000).
fn integer_problem(value: i128) -> Option<NumberProblem> {
    const EXACT_IN_DOUBLE: i128 = 1 << 53;
    if (-EXACT_IN_DOUBLE..=EXACT_IN_DOUBLE).contains(&value) {
        return None;
    }
    // Casts on purpose: the nearest double is what a double reader gets, and every
    // double near the i64 / u64 range is an integer that fits in i128.
    let nearest = value as f64;
    if nearest as i128 != value {
        return Some(NumberProblem::ChangesAsDouble);
    }
    let mut text = StackText::default();
    if fmt::write(&mut text, format_args!("{value}")).is_err() {
        return Some(NumberProblem::ChangesAsDouble);
    }
    if same_decimal(text.as_bytes(), nearest) {
        None
    } else {
        Some(NumberProblem::ChangesAsDouble)
    }
}

/// Checks a literal serde_json read as the double `value`.
fn check_float_literal(literal: &[u8], value: f64) -> Result<(), NumberProblem> {
    let is_integer_literal = !literal.iter().any(|b| matches!(b, b'.' | b'e' | b'E'));
    if value == 0.0 && (value.is_sign_negative() || literal.first() == Some(&b'-')) {
        // `-0` in any spelling; `-1e-400` underflows to -0 and lands here too.
        return Err(if parse_decimal(literal).is_zero() {
            NumberProblem::NegativeZero
        } else {
            NumberProblem::ChangesAsDouble
        });
    }
    if is_integer_literal {
        // serde_json reads integer literals as doubles only beyond i64 / u64.
        return Err(NumberProblem::IntegerOutOfRange);
    }
    if same_decimal(literal, value) || is_other_shortest_form(literal, value) {
        Ok(())
    } else {
        Err(NumberProblem::ChangesAsDouble)
    }
}

/// A double exactly halfway between two shortest decimals has two shortest forms
/// (900719925474209.25 is both `900719925474209.2` and `900719925474209.3`), and
/// writers break the tie differently (Rust's formatter and serde_json's disagree:
/// found by fuzzing, which re-serialised an accepted body and had it refused). Such a
/// literal is as short as the shortest form and reads, correctly rounded, as `value`.
fn is_other_shortest_form(literal: &[u8], value: f64) -> bool {
    let mut shortest = StackText::default();
    if fmt::write(&mut shortest, format_args!("{value:e}")).is_err() {
        return false;
    }
    let count = |d: &Decimal<'_>| d.digits.integer.len() + d.digits.fraction.len();
    count(&parse_decimal(literal)) <= count(&parse_decimal(shortest.as_bytes()))
        && std::str::from_utf8(literal)
            .ok()
            .and_then(|text| text.parse::<f64>().ok())
            .is_some_and(|nearest| nearest.to_bits() == value.to_bits())
}

/// Whether the JSON number `literal` and the shortest form of `value` are one decimal.
fn same_decimal(literal: &[u8], value: f64) -> bool {
    let mut shortest = StackText::default();
    if fmt::write(&mut shortest, format_args!("{value:e}")).is_err() {
        return false;
    }
    parse_decimal(literal) == parse_decimal(shortest.as_bytes())
}

/// A decimal number as `digits × 10^exponent`, digits without leading or trailing zeros.
#[derive(Debug, PartialEq, Eq)]
struct Decimal<'a> {
    negative: bool,
    /// ASCII digits of the significand; the integer and fraction parts may be apart.
    digits: Digits<'a>,
    exponent: i64,
}

impl Decimal<'_> {
    fn is_zero(&self) -> bool {
        self.digits.is_empty()
    }
}

/// The significant digits of a literal, kept as its two slices (no allocation).
#[derive(Debug)]
struct Digits<'a> {
    integer: &'a [u8],
    fraction: &'a [u8],
}

impl Digits<'_> {
    fn is_empty(&self) -> bool {
        self.integer.is_empty() && self.fraction.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = &u8> {
        self.integer.iter().chain(self.fraction)
    }
}

impl PartialEq for Digits<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.integer.len() + self.fraction.len() == other.integer.len() + other.fraction.len()
            && self.iter().eq(other.iter())
    }
}

impl Eq for Digits<'_> {}

/// Splits a number in JSON syntax (also Rust's `{:e}` output, which is JSON syntax).
/// Zero has no digits; its sign and exponent are then irrelevant and set to defaults.
fn parse_decimal(text: &[u8]) -> Decimal<'_> {
    let (negative, rest) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    let mantissa_end = rest
        .iter()
        .position(|b| matches!(b, b'e' | b'E'))
        .unwrap_or(rest.len());
    let (mantissa, exponent_part) = rest.split_at(mantissa_end);
    let (integer, fraction) = match mantissa.iter().position(|&b| b == b'.') {
        Some(dot) => (&mantissa[..dot], &mantissa[dot + 1..]),
        None => (mantissa, &[][..]),
    };
    let mut exponent = parse_exponent(exponent_part.get(1..).unwrap_or(&[]))
        .saturating_sub(i64::try_from(fraction.len()).unwrap_or(i64::MAX));

    // Trailing zeros move into the exponent; leading zeros are dropped.
    let (integer, fraction) = if fraction.iter().any(|&b| b != b'0') {
        let kept = fraction.len() - fraction.iter().rev().take_while(|&&b| b == b'0').count();
        exponent = exponent.saturating_add(i64::try_from(fraction.len() - kept).unwrap_or(0));
        (integer, &fraction[..kept])
    } else {
        exponent = exponent.saturating_add(i64::try_from(fraction.len()).unwrap_or(0));
        let kept = integer.len() - integer.iter().rev().take_while(|&&b| b == b'0').count();
        exponent = exponent.saturating_add(i64::try_from(integer.len() - kept).unwrap_or(0));
        (&integer[..kept], &[][..])
    };
    let integer = &integer[integer.iter().take_while(|&&b| b == b'0').count()..];
    let fraction = if integer.is_empty() {
        &fraction[fraction.iter().take_while(|&&b| b == b'0').count()..]
    } else {
        fraction
    };
    let digits = Digits { integer, fraction };
    if digits.is_empty() {
        return Decimal {
            negative: false,
            digits,
            exponent: 0,
        };
    }
    Decimal {
        negative,
        digits,
        exponent,
    }
}

/// An exponent like `+12`, `-0003` or `400000000000000000000`; saturates far beyond
/// the range of a double, where every value is refused anyway.
fn parse_exponent(text: &[u8]) -> i64 {
    const SATURATED: i64 = 1 << 40;
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, text),
    };
    // Callers pass grammar-checked digits; anything else counts as 0 rather than
    // wrapping.
    let magnitude = digits.iter().fold(0i64, |acc, &d| {
        (acc * 10 + i64::from(d.checked_sub(b'0').filter(|v| *v <= 9).unwrap_or(0))).min(SATURATED)
    });
    if negative { -magnitude } else { magnitude }
}

/// Finds number literals in document order, skipping strings. Resumes where it
/// stopped, so a whole parse scans the input at most once, and only up to the last
/// non-integer number (integers are checked from their value alone).
#[derive(Default)]
struct LiteralScanner {
    position: usize,
    /// Number literals passed so far.
    passed: usize,
}

impl LiteralScanner {
    fn nth_literal<'a>(&mut self, input: &'a [u8], index: usize) -> Option<&'a [u8]> {
        while self.position < input.len() {
            match input[self.position] {
                b'"' => self.position = skip_string(input, self.position + 1)?,
                b'-' | b'0'..=b'9' => {
                    let start = self.position;
                    self.position = start + number_length(&input[start..]);
                    self.passed += 1;
                    if self.passed == index + 1 {
                        return Some(&input[start..self.position]);
                    }
                }
                _ => self.position += 1,
            }
        }
        None
    }
}

/// The length of the JSON number at the start of `text`, by the RFC 8259 grammar
/// (`-? int frac? exp?`). Only the grammar: serde_json reads a number and then checks
/// what follows it, so a run like `1e40-00` must end after `1e40` (found by fuzzing:
/// taking every `[0-9+-.eE]` byte fed `-` to the exponent's digit arithmetic).
fn number_length(text: &[u8]) -> usize {
    let digits_from = |i: usize| i + text[i..].iter().take_while(|b| b.is_ascii_digit()).count();
    let mut i = usize::from(text.first() == Some(&b'-'));
    i = digits_from(i);
    if text.get(i) == Some(&b'.') {
        i = digits_from(i + 1);
    }
    if matches!(text.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(text.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = digits_from(i);
    }
    i
}

/// The position just after the string whose content starts at `from`.
fn skip_string(input: &[u8], mut from: usize) -> Option<usize> {
    loop {
        let offset = memchr::memchr2(b'"', b'\\', input.get(from..)?)?;
        let at = from + offset;
        if input[at] == b'"' {
            return Some(at + 1);
        }
        from = at + 2; // a backslash and the byte it escapes
    }
}

/// A small stack buffer for formatting one number without allocating (an f64 in `{:e}`
/// form takes at most 24 bytes).
#[derive(Default)]
struct StackText {
    bytes: [u8; 32],
    len: usize,
}

impl StackText {
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let slot = self.bytes.get_mut(self.len..end).ok_or(fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
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
        let body =
            r#"{"1.5":"2.5\"3e9\\","n":[7,-8,"-0",0.5,{"9":1e2}],"z":0.10000000000000000001}"#;
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
}
