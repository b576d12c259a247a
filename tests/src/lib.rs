//! Shared helpers for switchboard's workspace-level integration tests.
