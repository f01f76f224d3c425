//! The work behind the command line's subcommands that is more than a call into one
//! module: `check` and the self-contained `dev` demo.

pub mod check;
pub mod dev;
