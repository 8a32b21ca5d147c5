//! The token issuer role: `openrelay issuer` and its network edge.

pub mod cmd;
pub mod run;
