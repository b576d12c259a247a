//! switchboard-discovery (work in progress).
