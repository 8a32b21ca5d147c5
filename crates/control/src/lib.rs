//! In-tunnel control messages: a versioned, length-checked wire format and the setup exchange.
