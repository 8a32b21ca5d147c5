//! The signed relay directory, read through one interface, and relay selection.
