//! Library side of the `openrelay` command: the demo network, which the integration tests
//! reuse so that they exercise exactly what a newcomer runs.

pub mod demo;
pub mod issuer;
