//! What [`super::parse`] refuses, and where: one variant per class, each with a stable
//! code, its JSON-RPC error code and a location that names keys, never values.

use std::fmt;

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
