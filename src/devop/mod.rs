//! Development-only parts for `ciba-gate dev`: a demo MCP tool server (and, with the
//! approvals feature, a development OpenID Provider). Never used by `serve`.

pub mod demo_tools;
pub mod op;
