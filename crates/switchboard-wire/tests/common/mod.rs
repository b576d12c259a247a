//! Shared proptest strategies and fixtures for the wire tests.
//!
//! `frame()` produces arbitrary [`Frame`]s of every [`Kind`], with nested
//! frames (inside `Snapshot` and `Change`) down to a bounded depth.

#![allow(dead_code)]

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::strategy::Union;
use switchboard_wire::proto::{self, change, session};
use switchboard_wire::{Frame, Kind};

/// How deep frames may nest inside `Snapshot` / `Change` frames.
pub const MAX_NESTING: u32 = 2;

/// Number of variants of [`Kind`].
pub const KIND_COUNT: usize = 42;

/// Position of a kind in the `oneof` (same order as the `.proto` file).
///
/// The match is exhaustive on purpose: a new kind breaks compilation here
/// until the strategies below learn about it.
pub fn kind_index(kind: &Kind) -> usize {
    match kind {
        Kind::Probe(_) => 0,
        Kind::ProbeReply(_) => 1,
        Kind::Hello(_) => 2,
        Kind::Challenge(_) => 3,
        Kind::Auth(_) => 4,
        Kind::Welcome(_) => 5,
        Kind::Goodbye(_) => 6,
        Kind::Error(_) => 7,
        Kind::Ping(_) => 8,
        Kind::Pong(_) => 9,
        Kind::Ack(_) => 10,
        Kind::Flow(_) => 11,
        Kind::Ok(_) => 12,
        Kind::Direct(_) => 13,
        Kind::Request(_) => 14,
        Kind::Reply(_) => 15,
        Kind::Broadcast(_) => 16,
        Kind::Publish(_) => 17,
        Kind::Subscribe(_) => 18,
        Kind::Unsubscribe(_) => 19,
        Kind::Deliver(_) => 20,
        Kind::Cancel(_) => 40,
        Kind::Listen(_) => 41,
        Kind::KvSet(_) => 21,
        Kind::KvGet(_) => 22,
        Kind::KvDelete(_) => 23,
        Kind::KvWatch(_) => 24,
        Kind::KvUnwatch(_) => 25,
        Kind::KvValue(_) => 26,
        Kind::KvUpdate(_) => 27,
        Kind::PresenceWatch(_) => 28,
        Kind::Presence(_) => 29,
        Kind::ListClients(_) => 30,
        Kind::ClientList(_) => 31,
        Kind::Session(_) => 32,
        Kind::ReplHello(_) => 33,
        Kind::Snapshot(_) => 34,
        Kind::Change(_) => 35,
        Kind::ReplAck(_) => 36,
        Kind::Heartbeat(_) => 37,
        Kind::StatusRequest(_) => 38,
        Kind::Status(_) => 39,
    }
}

/// One default-valued frame of every kind, in `.proto` order.
pub fn one_of_every_kind() -> Vec<Frame> {
    let kinds = vec![
        Kind::Probe(Default::default()),
        Kind::ProbeReply(Default::default()),
        Kind::Hello(Default::default()),
        Kind::Challenge(Default::default()),
        Kind::Auth(Default::default()),
        Kind::Welcome(Default::default()),
        Kind::Goodbye(Default::default()),
        Kind::Error(Default::default()),
        Kind::Ping(Default::default()),
        Kind::Pong(Default::default()),
        Kind::Ack(Default::default()),
        Kind::Flow(Default::default()),
        Kind::Ok(Default::default()),
        Kind::Direct(Default::default()),
        Kind::Request(Default::default()),
        Kind::Reply(Default::default()),
        Kind::Broadcast(Default::default()),
        Kind::Publish(Default::default()),
        Kind::Subscribe(Default::default()),
        Kind::Unsubscribe(Default::default()),
        Kind::Deliver(Default::default()),
        Kind::Cancel(Default::default()),
        Kind::Listen(Default::default()),
        Kind::KvSet(Default::default()),
        Kind::KvGet(Default::default()),
        Kind::KvDelete(Default::default()),
        Kind::KvWatch(Default::default()),
        Kind::KvUnwatch(Default::default()),
        Kind::KvValue(Default::default()),
        Kind::KvUpdate(Default::default()),
        Kind::PresenceWatch(Default::default()),
        Kind::Presence(Default::default()),
        Kind::ListClients(Default::default()),
        Kind::ClientList(Default::default()),
        Kind::Session(Default::default()),
        Kind::ReplHello(Default::default()),
        Kind::Snapshot(Default::default()),
        Kind::Change(Default::default()),
        Kind::ReplAck(Default::default()),
        Kind::Heartbeat(Default::default()),
        Kind::StatusRequest(Default::default()),
        Kind::Status(Default::default()),
    ];
    kinds.into_iter().map(Frame::from).collect()
}

// ---- scalars -------------------------------------------------------------

/// Short arbitrary Unicode text (empty included).
pub fn text() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        2 => "[a-z0-9._-]{0,12}",
        1 => ".{0,8}",
    ]
}

/// Arbitrary payload bytes (empty included).
pub fn payload() -> impl Strategy<Value = Bytes> + Clone {
    prop_oneof![
        3 => vec(any::<u8>(), 0..48).prop_map(Bytes::from),
        1 => vec(any::<u8>(), 200..600).prop_map(Bytes::from),
    ]
}

/// An enum field: mostly known values, sometimes any `i32` (proto3 enums are
/// open, so unknown values must survive a round trip too).
pub fn enum_value(known: i32) -> impl Strategy<Value = i32> + Clone {
    prop_oneof![4 => 0..known, 1 => any::<i32>()]
}

fn error_code() -> impl Strategy<Value = i32> + Clone {
    enum_value(20)
}

fn role() -> impl Strategy<Value = i32> + Clone {
    enum_value(3)
}

fn string_map() -> impl Strategy<Value = BTreeMap<String, String>> + Clone {
    btree_map(text(), text(), 0..4)
}

// ---- shared sub-messages ------------------------------------------------

fn hub_identity() -> impl Strategy<Value = proto::HubIdentity> + Clone {
    (
        text(),
        text(),
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        role(),
    )
        .prop_map(
            |(service, instance_id, pid, port, epoch, started_at_ms, role)| proto::HubIdentity {
                service,
                instance_id,
                pid,
                port,
                epoch,
                started_at_ms,
                role,
            },
        )
}

fn client_info() -> impl Strategy<Value = proto::ClientInfo> + Clone {
    (
        text(),
        text(),
        text(),
        any::<u64>(),
        text(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(client_id, transport, addr, connected_at_ms, agent, reliable, listen)| {
                proto::ClientInfo {
                    client_id,
                    transport,
                    addr,
                    connected_at_ms,
                    agent,
                    reliable,
                    listen,
                    ..Default::default()
                }
            },
        )
}

/// Arbitrary application headers (mostly none).
pub fn headers() -> impl Strategy<Value = Vec<proto::Header>> + Clone {
    prop_oneof![
        3 => Just(Vec::new()),
        1 => vec((text(), payload()).prop_map(|(key, value)| proto::Header { key, value }), 0..4),
    ]
}

/// Arbitrary `Publish` bodies.
#[allow(dead_code)]
pub fn publish() -> impl Strategy<Value = proto::Publish> + Clone {
    (any::<u64>(), text(), text(), payload(), text(), headers()).prop_map(
        |(id, topic, from, payload, reply_to, headers)| proto::Publish {
            id,
            topic,
            from,
            payload,
            reply_to,
            headers,
        },
    )
}

/// Arbitrary `Deliver` bodies.
#[allow(dead_code)]
pub fn deliver() -> impl Strategy<Value = proto::Deliver> + Clone {
    (any::<u64>(), text(), text(), payload(), text(), headers()).prop_map(
        |(sub_id, topic, from, payload, reply_to, headers)| proto::Deliver {
            sub_id,
            topic,
            from,
            payload,
            reply_to,
            headers,
        },
    )
}

fn subscribe() -> impl Strategy<Value = proto::Subscribe> + Clone {
    (any::<u64>(), any::<u64>(), text(), text(), any::<bool>()).prop_map(
        |(id, sub_id, pattern, queue_group, service)| proto::Subscribe {
            id,
            sub_id,
            pattern,
            queue_group,
            service,
        },
    )
}

fn listen() -> impl Strategy<Value = proto::Listen> + Clone {
    (any::<u64>(), any::<bool>(), any::<bool>()).prop_map(|(id, messages, requests)| {
        proto::Listen {
            id,
            messages,
            requests,
        }
    })
}

fn kv_watch() -> impl Strategy<Value = proto::KvWatch> + Clone {
    (any::<u64>(), any::<u64>(), text(), any::<bool>()).prop_map(|(id, watch_id, key, prefix)| {
        proto::KvWatch {
            id,
            watch_id,
            key,
            prefix,
        }
    })
}

fn kv_entry() -> impl Strategy<Value = proto::KvEntry> + Clone {
    (text(), payload(), any::<u64>(), any::<bool>()).prop_map(|(key, value, version, deleted)| {
        proto::KvEntry {
            key,
            value,
            version,
            deleted,
        }
    })
}

// ---- session bodies -----------------------------------------------------

/// Arbitrary session-engine message bodies, every variant equally likely.
pub fn session_body() -> impl Strategy<Value = session::Body> {
    let event = (text(), text()).prop_map(|(code, command_key)| proto::Event { code, command_key });
    let inform = (
        text(),
        vec(event, 0..4),
        any::<u32>(),
        any::<u64>(),
        string_map(),
        any::<u32>(),
    )
        .prop_map(
            |(device_id, events, retry_count, current_time_ms, parameters, max_rpcs)| {
                session::Body::Inform(proto::Inform {
                    device_id,
                    events,
                    retry_count,
                    current_time_ms,
                    parameters,
                    max_rpcs,
                })
            },
        );
    let inform_response = any::<u32>().prop_map(|max_envelopes| {
        session::Body::InformResponse(proto::InformResponse { max_envelopes })
    });
    let rpc = (text(), text(), payload(), any::<bool>()).prop_map(
        |(id, method, payload, hold_requests)| {
            session::Body::Rpc(proto::Rpc {
                id,
                method,
                payload,
                hold_requests,
            })
        },
    );
    let rpc_result = (text(), text(), payload()).prop_map(|(id, method, payload)| {
        session::Body::RpcResult(proto::RpcResult {
            id,
            method,
            payload,
        })
    });
    let fault = (text(), any::<u32>(), text())
        .prop_map(|(id, code, message)| session::Body::Fault(proto::Fault { id, code, message }));
    let empty = Just(session::Body::Empty(proto::Empty {}));
    let connection_request = any::<u64>()
        .prop_map(|nonce| session::Body::ConnectionRequest(proto::ConnectionRequest { nonce }));
    let connection_request_ack = any::<u64>().prop_map(|nonce| {
        session::Body::ConnectionRequestAck(proto::ConnectionRequestAck { nonce })
    });
    prop_oneof![
        inform,
        inform_response,
        rpc,
        rpc_result,
        fault,
        empty,
        connection_request,
        connection_request_ack,
    ]
}

// ---- frames ---------------------------------------------------------------

/// Arbitrary frames of every kind, nesting at most [`MAX_NESTING`] levels.
pub fn frame() -> BoxedStrategy<Frame> {
    frame_at_depth(MAX_NESTING)
}

/// Arbitrary frames; frames nested inside them go at most `depth` levels
/// further down. Kinds are drawn uniformly; the frame may also carry no kind.
pub fn frame_at_depth(depth: u32) -> BoxedStrategy<Frame> {
    let kind = prop_oneof![
        40 => kind_at_depth(depth).prop_map(Some),
        1 => Just(None),
    ];
    (any::<u64>(), any::<u64>(), kind)
        .prop_map(|(seq, acked, kind)| Frame { seq, acked, kind })
        .boxed()
}

/// Arbitrary [`Kind`]s, every variant equally likely.
pub fn kind_at_depth(depth: u32) -> BoxedStrategy<Kind> {
    // Nested frames: none at the bottom, else frames one level down.
    let nested_one: BoxedStrategy<Option<Box<Frame>>> = if depth == 0 {
        Just(None).boxed()
    } else {
        proptest::option::of(frame_at_depth(depth - 1).prop_map(Box::new)).boxed()
    };
    let nested_many: BoxedStrategy<Vec<Frame>> = if depth == 0 {
        Just(Vec::new()).boxed()
    } else {
        vec(frame_at_depth(depth - 1), 0..3).boxed()
    };

    let client_frame =
        (text(), nested_one).prop_map(|(client_id, frame)| proto::ClientFrame { client_id, frame });
    let client_state = (
        proptest::option::of(client_info()),
        vec(subscribe(), 0..3),
        vec(kv_watch(), 0..3),
        any::<u64>(),
        any::<u64>(),
        nested_many,
        any::<bool>(),
        proptest::option::of(listen()),
    )
        .prop_map(
            |(
                info,
                subscriptions,
                watches,
                last_received,
                next_send,
                unacked,
                presence_watch,
                listen,
            )| {
                proto::ClientState {
                    info,
                    subscriptions,
                    watches,
                    last_received,
                    next_send,
                    unacked,
                    presence_watch,
                    listen,
                }
            },
        );
    let change_op = prop_oneof![
        client_frame
            .clone()
            .prop_map(|f| change::Op::ClientFrame(Box::new(f))),
        client_info().prop_map(change::Op::ClientJoined),
        text().prop_map(change::Op::ClientLeft),
        client_frame.prop_map(|f| change::Op::Sent(Box::new(f))),
        (text(), any::<u64>()).prop_map(|(client_id, up_to)| change::Op::ClientAck(
            proto::ClientAck { client_id, up_to }
        )),
        kv_entry().prop_map(change::Op::Kv),
        (text(), proptest::collection::vec(any::<u64>(), 0..4)).prop_map(|(client_id, seqs)| {
            change::Op::ClientDropped(proto::ClientDropped { client_id, seqs })
        }),
    ];

    let kinds: Vec<BoxedStrategy<Kind>> = vec![
        // ---- discovery ----
        (any::<u32>(), any::<u32>(), text(), payload())
            .prop_map(|(magic, version, service, nonce)| {
                Kind::Probe(proto::Probe {
                    magic,
                    version,
                    service,
                    nonce,
                })
            })
            .boxed(),
        (proptest::option::of(hub_identity()), payload(), payload())
            .prop_map(|(identity, hub_nonce, proof)| {
                Kind::ProbeReply(proto::ProbeReply {
                    identity,
                    hub_nonce,
                    proof,
                })
            })
            .boxed(),
        // ---- connection lifecycle ----
        (
            any::<u32>(),
            vec(text(), 0..4),
            text(),
            payload(),
            text(),
            text(),
            proptest::option::of((any::<u64>(), any::<u64>())),
            role(),
        )
            .prop_map(
                |(
                    protocol_version,
                    features,
                    client_id,
                    client_nonce,
                    agent,
                    transport,
                    resume,
                    role,
                )| {
                    Kind::Hello(proto::Hello {
                        protocol_version,
                        features,
                        client_id,
                        client_nonce,
                        agent,
                        transport,
                        resume: resume.map(|(last_received, epoch)| proto::Resume {
                            last_received,
                            epoch,
                        }),
                        role,
                        ..Default::default()
                    })
                },
            )
            .boxed(),
        (proptest::option::of(hub_identity()), payload(), payload())
            .prop_map(|(identity, hub_nonce, proof)| {
                Kind::Challenge(proto::Challenge {
                    identity,
                    hub_nonce,
                    proof,
                })
            })
            .boxed(),
        payload()
            .prop_map(|proof| Kind::Auth(proto::Auth { proof }))
            .boxed(),
        (
            text(),
            vec(text(), 0..4),
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            proptest::option::of(hub_identity()),
        )
            .prop_map(
                |(client_id, features, epoch, last_received, max_frame, keepalive_ms, identity)| {
                    Kind::Welcome(proto::Welcome {
                        client_id,
                        features,
                        epoch,
                        last_received,
                        max_frame,
                        keepalive_ms,
                        identity,
                    })
                },
            )
            .boxed(),
        (error_code(), text())
            .prop_map(|(code, message)| Kind::Goodbye(proto::Goodbye { code, message }))
            .boxed(),
        (any::<u64>(), error_code(), text())
            .prop_map(|(id, code, message)| Kind::Error(proto::Error { id, code, message }))
            .boxed(),
        any::<u64>()
            .prop_map(|nonce| Kind::Ping(proto::Ping { nonce }))
            .boxed(),
        any::<u64>()
            .prop_map(|nonce| Kind::Pong(proto::Pong { nonce }))
            .boxed(),
        any::<u64>()
            .prop_map(|up_to| Kind::Ack(proto::Ack { up_to }))
            .boxed(),
        (any::<u64>(), any::<u64>())
            .prop_map(|(dropped, queue_depth)| {
                Kind::Flow(proto::Flow {
                    dropped,
                    queue_depth,
                })
            })
            .boxed(),
        any::<u64>()
            .prop_map(|id| Kind::Ok(proto::Ok { id }))
            .boxed(),
        // ---- messaging ----
        (any::<u64>(), text(), text(), payload(), headers())
            .prop_map(|(id, to, from, payload, headers)| {
                Kind::Direct(proto::Direct {
                    id,
                    to,
                    from,
                    payload,
                    headers,
                })
            })
            .boxed(),
        (
            (any::<u64>(), text(), text(), any::<u32>(), payload()),
            (text(), headers(), text(), any::<u64>()),
        )
            .prop_map(
                |((id, to, from, timeout_ms, payload), (method, headers, service, sub_id))| {
                    Kind::Request(proto::Request {
                        id,
                        to,
                        from,
                        timeout_ms,
                        payload,
                        method,
                        headers,
                        service,
                        sub_id,
                    })
                },
            )
            .boxed(),
        (
            any::<u64>(),
            text(),
            text(),
            payload(),
            any::<bool>(),
            headers(),
        )
            .prop_map(|(id, to, from, payload, is_error, headers)| {
                Kind::Reply(proto::Reply {
                    id,
                    to,
                    from,
                    payload,
                    is_error,
                    headers,
                })
            })
            .boxed(),
        (any::<u64>(), text(), payload(), headers())
            .prop_map(|(id, from, payload, headers)| {
                Kind::Broadcast(proto::Broadcast {
                    id,
                    from,
                    payload,
                    headers,
                })
            })
            .boxed(),
        publish().prop_map(Kind::Publish).boxed(),
        subscribe().prop_map(Kind::Subscribe).boxed(),
        (any::<u64>(), any::<u64>())
            .prop_map(|(id, sub_id)| Kind::Unsubscribe(proto::Unsubscribe { id, sub_id }))
            .boxed(),
        deliver().prop_map(Kind::Deliver).boxed(),
        any::<u64>()
            .prop_map(|id| Kind::Cancel(proto::Cancel { id }))
            .boxed(),
        listen().prop_map(Kind::Listen).boxed(),
        // ---- key/value ----
        (
            any::<u64>(),
            text(),
            payload(),
            proptest::option::of(any::<u64>()),
        )
            .prop_map(|(id, key, value, expect_version)| {
                Kind::KvSet(proto::KvSet {
                    id,
                    key,
                    value,
                    expect_version,
                })
            })
            .boxed(),
        (any::<u64>(), text())
            .prop_map(|(id, key)| Kind::KvGet(proto::KvGet { id, key }))
            .boxed(),
        (any::<u64>(), text(), proptest::option::of(any::<u64>()))
            .prop_map(|(id, key, expect_version)| {
                Kind::KvDelete(proto::KvDelete {
                    id,
                    key,
                    expect_version,
                })
            })
            .boxed(),
        kv_watch().prop_map(Kind::KvWatch).boxed(),
        (any::<u64>(), any::<u64>())
            .prop_map(|(id, watch_id)| Kind::KvUnwatch(proto::KvUnwatch { id, watch_id }))
            .boxed(),
        (any::<u64>(), text(), payload(), any::<u64>(), any::<bool>())
            .prop_map(|(id, key, value, version, found)| {
                Kind::KvValue(proto::KvValue {
                    id,
                    key,
                    value,
                    version,
                    found,
                })
            })
            .boxed(),
        (
            any::<u64>(),
            text(),
            payload(),
            any::<u64>(),
            any::<bool>(),
            text(),
        )
            .prop_map(|(watch_id, key, value, version, deleted, by)| {
                Kind::KvUpdate(proto::KvUpdate {
                    watch_id,
                    key,
                    value,
                    version,
                    deleted,
                    by,
                })
            })
            .boxed(),
        // ---- registry and presence ----
        (any::<u64>(), any::<bool>())
            .prop_map(|(id, stop)| Kind::PresenceWatch(proto::PresenceWatch { id, stop }))
            .boxed(),
        (proptest::option::of(client_info()), enum_value(3), text())
            .prop_map(|(client, kind, reason)| {
                Kind::Presence(proto::Presence {
                    client,
                    kind,
                    reason,
                })
            })
            .boxed(),
        any::<u64>()
            .prop_map(|id| Kind::ListClients(proto::ListClients { id }))
            .boxed(),
        (any::<u64>(), vec(client_info(), 0..4))
            .prop_map(|(id, clients)| Kind::ClientList(proto::ClientList { id, clients }))
            .boxed(),
        // ---- session engine ----
        (text(), any::<u64>(), proptest::option::of(session_body()))
            .prop_map(|(peer, session_id, body)| {
                Kind::Session(proto::Session {
                    peer,
                    session_id,
                    body,
                })
            })
            .boxed(),
        // ---- replication ----
        (text(), any::<u64>(), text())
            .prop_map(|(instance_id, epoch, addr)| {
                Kind::ReplHello(proto::ReplHello {
                    instance_id,
                    epoch,
                    addr,
                })
            })
            .boxed(),
        (
            any::<u64>(),
            any::<u64>(),
            vec(client_state, 0..3),
            vec(kv_entry(), 0..4),
            string_map(),
            text(),
            text(),
        )
            .prop_map(|(epoch, repl_seq, clients, kv, config, addr, service)| {
                Kind::Snapshot(proto::Snapshot {
                    epoch,
                    repl_seq,
                    clients,
                    kv,
                    config,
                    addr,
                    service,
                })
            })
            .boxed(),
        (any::<u64>(), proptest::option::of(change_op))
            .prop_map(|(repl_seq, op)| Kind::Change(Box::new(proto::Change { repl_seq, op })))
            .boxed(),
        any::<u64>()
            .prop_map(|repl_seq| Kind::ReplAck(proto::ReplAck { repl_seq }))
            .boxed(),
        (any::<u64>(), any::<u64>(), any::<u64>(), role())
            .prop_map(|(epoch, repl_seq, time_ms, role)| {
                Kind::Heartbeat(proto::Heartbeat {
                    epoch,
                    repl_seq,
                    time_ms,
                    role,
                })
            })
            .boxed(),
        // ---- operations ----
        any::<u64>()
            .prop_map(|id| Kind::StatusRequest(proto::StatusRequest { id }))
            .boxed(),
        status().prop_map(Kind::Status).boxed(),
    ];
    assert_eq!(kinds.len(), KIND_COUNT, "one strategy per frame kind");
    Union::new(kinds).boxed()
}

fn status() -> impl Strategy<Value = proto::Status> {
    let counters = (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    );
    (
        any::<u64>(),
        proptest::option::of(hub_identity()),
        counters,
        any::<u64>(),
        text(),
        any::<u64>(),
        any::<u64>(),
        btree_map(text(), any::<u64>(), 0..4),
    )
        .prop_map(
            |(
                id,
                identity,
                (
                    uptime_s,
                    clients,
                    subscriptions,
                    msgs_in,
                    msgs_out,
                    bytes_in,
                    bytes_out,
                    dropped,
                    queue_depth,
                    pending_requests,
                ),
                kv_keys,
                standby_addr,
                repl_lag_changes,
                repl_lag_bytes,
                counters,
            )| proto::Status {
                id,
                identity,
                uptime_s,
                clients,
                subscriptions,
                msgs_in,
                msgs_out,
                bytes_in,
                bytes_out,
                dropped,
                queue_depth,
                pending_requests,
                kv_keys,
                standby_addr,
                repl_lag_changes,
                repl_lag_bytes,
                counters,
            },
        )
}
