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

mod error;
mod numbers;
pub use error::{Location, NumberProblem, StrictJsonError};
use numbers::*;

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
mod tests;
