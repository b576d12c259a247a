//! switchboard-session (work in progress).
