//! The blocking client of the broker daemon.
