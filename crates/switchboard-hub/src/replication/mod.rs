//! Hot standby: the primary's end of the replication link ([`link`]),
//! fencing of an old primary ([`fencing`]), and the standby itself
//! ([`follower`]). The primary's router task (`router_task.rs`) drives the
//! link. The design is in the project's `ARCHITECTURE.md`, "Hot standby";
//! the link's frames in `docs/PROTOCOL.md`.

pub(crate) mod fencing;
pub(crate) mod follower;
pub(crate) mod link;
