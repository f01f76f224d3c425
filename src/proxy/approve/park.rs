//! Parked: the call is answered "pending" at once; the identical retry picks up the
//! decision. Plain HTTP gets 202 with `Retry-After`; an MCP 2026-07-28 client that
//! declared it answers form elicitations gets `input_required` with a sealed
//! `requestState`; every other MCP client a tool result the model can read (in the
//! negotiated revision's shape).

use http::StatusCode;

use super::wait::{self, Parked};
use super::{Concluded, State, pending_http_body};
use crate::approval::request_state::{self, RequestState};
use crate::approval::{Approvals, Ticket};
use crate::proxy::call::{Call, Caller};
use crate::proxy::mcp::results;
use crate::store::now_ms;

/// Longest life of a sealed `requestState`, whatever the approval's deadline.
const REQUEST_STATE_MAX_MS: u64 = 10 * 60 * 1000;

pub(super) fn answer(
    call: &Call<'_>,
    approvals: &Approvals,
    ticket: &Ticket,
    caller: &Caller,
) -> Concluded {
    let binding = &ticket.params.binding_message;
    let retry = approvals.settings.park_retry_after.as_secs().max(1);
    let id = match caller {
        Caller::Mcp { id, .. } => id.clone(),
        Caller::Http => serde_json::Value::Null,
    };
    let stateless = matches!(
        caller,
        Caller::Mcp {
            stateless: true,
            ..
        }
    );
    let (status, body, retry_after) = match wait::parked(caller) {
        Parked::Accepted => (
            StatusCode::ACCEPTED,
            pending_http_body(binding, retry),
            Some(retry),
        ),
        Parked::InputRequired => {
            let state = request_state::seal(
                approvals.state_key(),
                &RequestState {
                    sub: call.gw.agent.id.clone(),
                    dig: ticket.fingerprint.clone(),
                    exp: ticket.deadline_ms.min(now_ms() + REQUEST_STATE_MAX_MS),
                },
            );
            (
                StatusCode::OK,
                results::input_required(id, binding, &state),
                None,
            )
        }
        Parked::PendingToolResult => (
            StatusCode::OK,
            results::pending_tool_result(id, binding, retry, stateless),
            None,
        ),
    };
    Concluded::Answer {
        status,
        body,
        state: State::Pending,
        retry_after,
    }
}
