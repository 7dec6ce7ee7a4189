//! The broker wire protocol (see docs/PROTOCOL.md).
