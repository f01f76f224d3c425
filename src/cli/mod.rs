//! The work behind the command line's subcommands that is more than a call into one
//! module: `check`, the self-contained `dev` demo, and the offline policy tools.

pub mod check;
pub mod dev;
pub mod policy;
