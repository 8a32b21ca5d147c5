//! Tests across modules: RFC 9807 vectors, whole flows, the store under crashes, and
//! properties of the wire format.

mod flow;
mod props;
mod store;
mod vectors;
