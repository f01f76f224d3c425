//! ciba-gate: a sidecar that checks every tool call an agent makes against Rego
//! policy and, for sensitive calls, asks the user to approve on their phone.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod approval;
pub mod audit;
pub mod ciba;
pub mod cli;
pub mod clock;
pub mod config;
pub mod devop;
pub mod fingerprint;
#[doc(hidden)]
pub mod fuzzing;
pub mod json_strict;
pub mod outcome;
pub mod policy;
pub mod proxy;
pub mod secret;
pub mod store;
pub mod telemetry;
pub mod validate;
pub mod verify;
