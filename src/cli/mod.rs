//! The work behind the command line's subcommands that is more than a call into one
//! module: `check`, the self-contained `dev` demo, the offline policy tools, and evidence verification.

pub mod check;
pub mod dev;
pub mod evidence;
pub mod policy;
