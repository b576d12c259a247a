//! Why a snapshot could not be restored or a replicated change not applied
//! (see [`replica`](super::replica)).

/// Why a snapshot could not be restored or a change not applied. After an
/// error from [`Replica::apply`](super::replica::Replica::apply) the replica refuses further changes: it
/// needs a fresh snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    /// A change was skipped.
    #[error(
        "change {got} arrived but {expected} was expected; resynchronise from a fresh snapshot"
    )]
    Gap {
        /// The sequence number due.
        expected: u64,
        /// The one received.
        got: u64,
    },
    /// A change names a client the replica does not hold.
    #[error("a change names client '{0}', which this replica does not hold; resynchronise from a fresh snapshot")]
    UnknownClient(String),
    /// Malformed replication data.
    #[error("invalid replication data: {0}; resynchronise from a fresh snapshot")]
    Invalid(String),
    /// The primary runs with other limits.
    #[error("limit '{key}' is {theirs} on the primary but {ours} here; start the standby with the primary's limits")]
    ConfigMismatch {
        /// The limit's name.
        key: String,
        /// This router's value.
        ours: String,
        /// The primary's value.
        theirs: String,
    },
    /// The snapshot belongs to another service.
    #[error("the snapshot is of service '{theirs}' but this hub serves '{ours}'; pair hubs of the same service")]
    ServiceMismatch {
        /// This hub's service.
        ours: String,
        /// The snapshot's service.
        theirs: String,
    },
    /// The data uses a part of replication not built yet.
    #[error("{0} cannot be replicated yet; run without a standby")]
    Unsupported(&'static str),
    /// Replaying did not reproduce the primary's state.
    #[error(
        "the replica's state differs from the primary's: {0}; resynchronise from a fresh snapshot"
    )]
    Diverged(String),
    /// An earlier error stopped the replica.
    #[error("this replica stopped after an earlier error; resynchronise from a fresh snapshot")]
    Stopped,
}
