//! Following a JetStream KV bucket for good (the id and heartbeat
//! buckets of the directory, the shared key/value store), across NATS
//! node losses and reconnections, including a watch that falls silent
//! without an error.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::kv::{self, Store};
use futures::StreamExt;

/// Follows every key of `store` while `open` says so: from the start
/// (the current values, and the history the bucket keeps), and after an
/// error or end (a NATS node lost, a reconnect) again from the revision
/// after the last one seen, handing each entry to `on` once, in revision
/// order; returns when `on` returns `false` or `open` before a reopening.
///
/// A watch can also fall silent without an error: the NATS client
/// recreates its consumer after a reconnect by itself, with waits growing
/// to 10 s between tries, and reports nothing meanwhile. So every `check`
/// during which nothing arrived, the bucket's last revision is asked of
/// the stream; behind it twice in a row (the first may be an update in
/// flight), the watch is reopened from the last revision seen (at most
/// once per last revision, so a revision that is gone from the stream
/// cannot make it reopen for ever). Counted in `stalled`.
pub(crate) async fn follow<F: Future<Output = bool>>(
    store: &Store,
    name: &str,
    check: Duration,
    stalled: &AtomicU64,
    open: impl Fn() -> bool,
    mut on: impl FnMut(kv::Entry) -> F,
) {
    let mut last = 0u64;
    // Kept across reopenings: at most one reopening per newest revision.
    let mut silence = Silence::default();
    while open() {
        let opened = if last == 0 {
            store.watch_with_history(">").await
        } else {
            store.watch_all_from_revision(last + 1).await
        };
        match opened {
            Ok(mut w) => {
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + check, check);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                silence.opened();
                // The bucket's newest revision, asked beside the watch (a
                // request may wait for its timeout while the connection
                // is down; the watch's entries must not wait behind it).
                let mut probe = std::pin::pin!(futures::future::OptionFuture::from(None));
                let mut probing = false;
                loop {
                    tokio::select! {
                        next = w.next() => match next {
                            Some(Ok(entry)) => {
                                silence.heard();
                                if entry.revision <= last {
                                    continue;
                                }
                                last = entry.revision;
                                if !on(entry).await {
                                    return;
                                }
                            }
                            Some(Err(e)) => {
                                tracing::debug!(bucket = name, error = %e, "federation: bucket watch broke; reopening");
                                break;
                            }
                            None => break,
                        },
                        _ = tick.tick() => {
                            if !probing && silence.quiet_since_last_check() {
                                probe.set(Some(store.stream.get_info()).into());
                                probing = true;
                            }
                        }
                        Some(info) = &mut probe, if probing => {
                            probe.set(None.into());
                            probing = false;
                            let Ok(info) = info else {
                                continue;
                            };
                            let newest = info.state.last_sequence;
                            if silence.stalled(last, newest) {
                                stalled.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(bucket = name, seen = last, newest, "federation: watch silent while the bucket moved on; reopening");
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => {
                tracing::debug!(bucket = name, error = %e, "federation: cannot watch the bucket yet; retrying");
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The stall check of a watch (see [`watch`]): whether it heard anything
/// since the last check, whether it was behind then, and the newest
/// revision it was last reopened for.
#[derive(Debug, Default)]
struct Silence {
    heard: bool,
    behind: bool,
    reopened_for: u64,
}

impl Silence {
    /// A watch was (re)opened: nothing heard yet, not behind.
    fn opened(&mut self) {
        self.heard = false;
        self.behind = false;
    }

    /// An entry arrived.
    fn heard(&mut self) {
        self.heard = true;
    }

    /// At a check: whether nothing arrived since the previous one (then
    /// the caller asks the bucket for its newest revision).
    fn quiet_since_last_check(&mut self) -> bool {
        if std::mem::take(&mut self.heard) {
            self.behind = false;
            return false;
        }
        true
    }

    /// After a quiet period, with `last` the revision seen and `newest`
    /// the bucket's: whether to reopen (behind at two checks in a row, and
    /// not already reopened for `newest`).
    fn stalled(&mut self, last: u64, newest: u64) -> bool {
        if newest <= last || newest == self.reopened_for {
            self.behind = false;
            return false;
        }
        if std::mem::replace(&mut self.behind, true) {
            self.reopened_for = newest;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::Silence;

    #[test]
    fn a_watch_hearing_entries_is_never_stalled() {
        let mut s = Silence::default();
        s.opened();
        for _ in 0..5 {
            s.heard();
            assert!(!s.quiet_since_last_check());
        }
    }

    #[test]
    fn a_quiet_watch_reopens_only_when_behind_at_two_checks_in_a_row() {
        let mut s = Silence::default();
        s.opened();
        // Quiet and up to date: never stalled.
        assert!(s.quiet_since_last_check());
        assert!(!s.stalled(7, 7));
        assert!(s.quiet_since_last_check());
        assert!(!s.stalled(7, 7));
        // Behind once: may be an update in flight.
        assert!(s.quiet_since_last_check());
        assert!(!s.stalled(7, 9));
        // The update arrived: the next check starts over.
        s.heard();
        assert!(!s.quiet_since_last_check());
        assert!(s.quiet_since_last_check());
        assert!(!s.stalled(9, 10));
        // Behind again at the next check: reopen.
        assert!(s.quiet_since_last_check());
        assert!(s.stalled(9, 10));
    }

    #[test]
    fn a_revision_gone_from_the_stream_reopens_once_not_for_ever() {
        let mut s = Silence::default();
        s.opened();
        assert!(!s.stalled(3, 5));
        assert!(s.stalled(3, 5));
        // Reopened, and still nothing arrives for revision 5.
        s.opened();
        for _ in 0..4 {
            assert!(s.quiet_since_last_check());
            assert!(!s.stalled(3, 5));
        }
        // A newer revision the watch misses again is worth a reopening.
        assert!(!s.stalled(3, 6));
        assert!(s.stalled(3, 6));
    }
}
