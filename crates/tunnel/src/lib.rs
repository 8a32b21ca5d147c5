//! Nested WireGuard sessions (outer to the ingress, inner to the egress), sans-IO.
