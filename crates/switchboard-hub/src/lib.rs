//! switchboard-hub (work in progress).
