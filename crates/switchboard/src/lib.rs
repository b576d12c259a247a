//! switchboard facade (work in progress).
