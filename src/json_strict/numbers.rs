//! Numbers every reader holds the same: integers that are exact doubles, floats whose
//! shortest form denotes the literal's decimal value, compared digit by digit.

use super::*;

/// Integers up to 2^53 are exact in a double. A larger one must be a double exactly
/// (or a double reader holds another integer, even if it prints the same digits, as
/// 67994450833874930 does) and must also be written back with the same digits (2^60 is
/// exact but a double writer prints 1152921504606847000).
pub(super) fn integer_problem(value: i128) -> Option<NumberProblem> {
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
pub(super) fn check_float_literal(literal: &[u8], value: f64) -> Result<(), NumberProblem> {
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
pub(super) fn is_other_shortest_form(literal: &[u8], value: f64) -> bool {
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
pub(super) fn same_decimal(literal: &[u8], value: f64) -> bool {
    let mut shortest = StackText::default();
    if fmt::write(&mut shortest, format_args!("{value:e}")).is_err() {
        return false;
    }
    parse_decimal(literal) == parse_decimal(shortest.as_bytes())
}

/// A decimal number as `digits × 10^exponent`, digits without leading or trailing zeros.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Decimal<'a> {
    pub(super) negative: bool,
    /// ASCII digits of the significand; the integer and fraction parts may be apart.
    pub(super) digits: Digits<'a>,
    pub(super) exponent: i64,
}

impl Decimal<'_> {
    pub(super) fn is_zero(&self) -> bool {
        self.digits.is_empty()
    }
}

/// The significant digits of a literal, kept as its two slices (no allocation).
#[derive(Debug)]
pub(super) struct Digits<'a> {
    integer: &'a [u8],
    fraction: &'a [u8],
}

impl Digits<'_> {
    pub(super) fn is_empty(&self) -> bool {
        self.integer.is_empty() && self.fraction.is_empty()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &u8> {
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
pub(super) fn parse_decimal(text: &[u8]) -> Decimal<'_> {
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
pub(super) fn parse_exponent(text: &[u8]) -> i64 {
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
pub(super) struct LiteralScanner {
    position: usize,
    /// Number literals passed so far.
    passed: usize,
}

impl LiteralScanner {
    pub(super) fn nth_literal<'a>(&mut self, input: &'a [u8], index: usize) -> Option<&'a [u8]> {
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
pub(super) fn number_length(text: &[u8]) -> usize {
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
