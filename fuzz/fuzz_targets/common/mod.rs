//! Helpers the targets that drive a `Router` share.

use std::sync::Arc;
use std::time::Instant;

use switchboard_hub::outbox::Taken;
use switchboard_hub::router::{Input, Router};
use switchboard_hub::{ConnId, Outbox};
use switchboard_wire::{proto, Frame};

/// Connects client `id` as connection `n` over `transport`; returns its
/// outbox.
pub fn connect(
    router: &mut Router,
    now: Instant,
    n: u64,
    id: &str,
    transport: &str,
) -> Arc<Outbox> {
    let outbox = Outbox::new(ConnId(n));
    router.handle(
        now,
        Input::Connect {
            conn: ConnId(n),
            info: proto::ClientInfo {
                client_id: id.into(),
                transport: transport.into(),
                ..Default::default()
            },
            outbox: outbox.clone(),
        },
    );
    outbox
}

/// Everything queued for `outbox`, as frames.
pub fn take(outbox: &Outbox) -> Vec<Frame> {
    let mut taken = Taken::default();
    outbox.take(usize::MAX, &mut taken);
    taken.frames.into_iter().map(|o| o.into_frame()).collect()
}
