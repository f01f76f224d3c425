//! How a call waits for its person, by what the client can do: held over SSE, held
//! with a plain answer, or parked — and how a parked call is answered. The README's
//! "Hold or park" rule is this module; its tests are that rule, case by case.

use std::time::Duration;

use crate::approval::Mode;
use crate::proxy::call::Caller;

/// How the call is kept while the person decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// An event stream with keep-alives (and progress when the client sent a
    /// `progressToken`) until the answer or the deadline.
    OverSse,
    /// The request stays open, nothing written, until the answer or the deadline.
    Plain,
    /// Answered "pending" at once; the identical retry picks up the decision.
    Park,
}

/// The rule: with `mode: hold`, an MCP client whose request accepts an SSE answer is
/// held over SSE up to the deadline, whether or not it sent a `progressToken`; any
/// other client is held with a plain answer while the time left fits
/// `max_plain_wait`, else parked. `mode: park` parks every call.
pub(super) fn how(mode: Mode, caller: &Caller, left: Duration, max_plain_wait: Duration) -> Wait {
    let accepts_sse = matches!(
        caller,
        Caller::Mcp {
            accepts_sse: true,
            ..
        }
    );
    match mode {
        Mode::Park => Wait::Park,
        Mode::Hold if accepts_sse => Wait::OverSse,
        Mode::Hold if left <= max_plain_wait => Wait::Plain,
        Mode::Hold => Wait::Park,
    }
}

/// What a parked call is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Parked {
    /// Plain HTTP: `202 Accepted` with `Retry-After`.
    Accepted,
    /// An MCP 2026-07-28 client that declared it answers form elicitations: an
    /// `input_required` result with a sealed `requestState`.
    InputRequired,
    /// Every other MCP client: a tool result the model can read ("call again").
    PendingToolResult,
}

/// An input request goes only to a client that declared it can answer it.
pub(super) fn parked(caller: &Caller) -> Parked {
    match caller {
        Caller::Http => Parked::Accepted,
        Caller::Mcp {
            stateless: true,
            can_elicit: true,
            ..
        } => Parked::InputRequired,
        Caller::Mcp { .. } => Parked::PendingToolResult,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const MAX_PLAIN: Duration = Duration::from_secs(50);
    const SHORT: Duration = Duration::from_secs(30);
    const LONG: Duration = Duration::from_secs(300);

    fn mcp(accepts_sse: bool, progress: bool, stateless: bool, can_elicit: bool) -> Caller {
        Caller::Mcp {
            id: json!(1),
            progress_token: progress.then(|| Value::from("p1")),
            accepts_sse,
            stateless,
            can_elicit,
            request_state: None,
        }
    }

    #[test]
    fn a_client_that_accepts_sse_is_held_over_sse_with_or_without_a_progress_token() {
        for progress in [true, false] {
            for left in [SHORT, LONG] {
                let caller = mcp(true, progress, false, false);
                assert_eq!(how(Mode::Hold, &caller, left, MAX_PLAIN), Wait::OverSse);
            }
        }
    }

    #[test]
    fn any_other_client_is_held_plainly_only_while_the_wait_fits_max_plain_wait() {
        for caller in [mcp(false, true, false, false), Caller::Http] {
            assert_eq!(how(Mode::Hold, &caller, SHORT, MAX_PLAIN), Wait::Plain);
            assert_eq!(how(Mode::Hold, &caller, MAX_PLAIN, MAX_PLAIN), Wait::Plain);
            assert_eq!(how(Mode::Hold, &caller, LONG, MAX_PLAIN), Wait::Park);
        }
    }

    #[test]
    fn mode_park_parks_every_call() {
        for caller in [mcp(true, true, true, true), mcp(false, false, false, false)] {
            assert_eq!(how(Mode::Park, &caller, SHORT, MAX_PLAIN), Wait::Park);
        }
        assert_eq!(how(Mode::Park, &Caller::Http, SHORT, MAX_PLAIN), Wait::Park);
    }

    #[test]
    fn only_a_stateless_client_that_declared_form_elicitation_is_sent_input_required() {
        assert_eq!(parked(&mcp(true, false, true, true)), Parked::InputRequired);
        // Declaring elicitation means nothing to the session revisions.
        assert_eq!(
            parked(&mcp(true, false, false, true)),
            Parked::PendingToolResult
        );
        // A 2026-07-28 client without an elicitation handler (an SDK's default).
        assert_eq!(
            parked(&mcp(true, false, true, false)),
            Parked::PendingToolResult
        );
        assert_eq!(parked(&Caller::Http), Parked::Accepted);
    }
}
