//! Cheap checks on an encoded frame body before it is decoded.
//!
//! Protobuf decoding can cost far more memory than the bytes it reads: an
//! empty entry of a repeated message field is 2 bytes on the wire but a whole
//! struct in memory, so a frame of kinds that carry lists (`Snapshot`,
//! `ClientList`, ...) can grow about 200-fold when decoded. A hub therefore
//! looks at the *kind* of a frame from a client before decoding it and only
//! decodes the kinds clients may send, each within a per-kind size limit.
//! [`check_client_frame`] does that by walking the frame's top-level fields
//! (a few varints) without allocating.

use crate::{Direction, WireError};

/// Field number of `Frame.seq`.
const SEQ_TAG: u32 = 1;

/// Field number of `Frame.acked`.
const ACKED_TAG: u32 = 2;

/// Kinds of frames a client may send to a hub, by `Frame` field number, with
/// the largest kind body accepted for each (`usize::MAX`: only the connection's
/// frame limit applies). Kinds that carry repeated messages are either absent
/// (hub-to-client only) or capped.
const CLIENT_KINDS: &[(u32, &str, usize)] = &[
    (10, "probe", 1024),
    (20, "hello", 4096),
    (22, "auth", 1024),
    (24, "goodbye", 4096),
    (25, "error", 64 * 1024),
    (26, "ping", 64),
    (27, "pong", 64),
    (28, "ack", 64),
    (40, "direct", usize::MAX),
    (41, "request", usize::MAX),
    (42, "reply", usize::MAX),
    (43, "broadcast", usize::MAX),
    (44, "publish", usize::MAX),
    (45, "subscribe", 64 * 1024),
    (46, "unsubscribe", 64),
    (48, "cancel", 64),
    (49, "listen", 64),
    (60, "kv_set", usize::MAX),
    (61, "kv_get", 64 * 1024),
    (62, "kv_delete", 64 * 1024),
    (63, "kv_watch", 64 * 1024),
    (64, "kv_unwatch", 64),
    (70, "presence_watch", 64),
    (72, "list_clients", 64),
    // Inform carries repeated events and a parameter map: capped.
    (80, "session", 1024 * 1024),
    (90, "repl_hello", 4096),
    (93, "repl_ack", 64),
    (94, "heartbeat", 256),
    (100, "status_request", 64),
];

/// The kind of an encoded frame body, found without decoding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeekedKind {
    /// Field number of the kind in `Frame` (e.g. 44 for `publish`), or 0 for
    /// a frame without a kind.
    pub tag: u32,
    /// Length of the kind's encoded body in bytes.
    pub len: usize,
    /// Offset of the kind's body (after its length prefix) in the frame.
    pub start: usize,
    /// Offset just past the kind's body.
    pub end: usize,
}

fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, WireError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*pos).ok_or_else(|| malformed("truncated varint"))?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(malformed("varint longer than 10 bytes"))
}

fn malformed(reason: &'static str) -> WireError {
    WireError::Malformed { reason }
}

fn skip(buf: &[u8], pos: &mut usize, n: u64) -> Result<(), WireError> {
    let end = (*pos as u64)
        .checked_add(n)
        .ok_or_else(|| malformed("field length overflows"))?;
    if end > buf.len() as u64 {
        return Err(malformed("field runs past the end of the frame"));
    }
    *pos = end as usize;
    Ok(())
}

/// One field of an encoded message, as [`next_field`] read it.
struct Field {
    /// The field's key: its number shifted left by 3, and its wire type.
    key: u64,
    /// Where its value starts (after the key).
    at: usize,
    /// Where its bytes start: after a length-delimited value's length,
    /// else [`at`](Self::at).
    start: usize,
    /// Just past the value.
    end: usize,
    /// A varint's value (0 for the other wire types).
    varint: u64,
}

/// Reads the field at `pos` and moves past it. Fails on a broken layout or
/// a group encoding.
fn next_field(buf: &[u8], pos: &mut usize) -> Result<Field, WireError> {
    let key = read_varint(buf, pos)?;
    let at = *pos;
    let (mut start, mut varint) = (at, 0);
    match key & 7 {
        0 => varint = read_varint(buf, pos)?,
        1 => skip(buf, pos, 8)?,
        2 => {
            let len = read_varint(buf, pos)?;
            start = *pos;
            skip(buf, pos, len)?;
        }
        5 => skip(buf, pos, 4)?,
        _ => return Err(malformed("unsupported protobuf wire type")),
    }
    Ok(Field {
        key,
        at,
        start,
        end: *pos,
        varint,
    })
}

/// Walks the top-level fields of an encoded `Frame` body and returns its kind:
/// the kind field a decoder will keep.
///
/// Fields this version does not know (a newer peer's kinds or fields) are
/// skipped as a decoder skips them; the first of them is returned only
/// when the frame has no known kind. Fails on malformed field headers, on
/// deprecated group encodings and on a frame that carries more than one
/// known kind field (a correct encoder writes the `oneof` once, and a
/// decoder would keep the last, past any check made on the first).
pub fn peek_kind(body: &[u8]) -> Result<PeekedKind, WireError> {
    use crate::frames::is_known_tag;
    let mut pos = 0;
    let mut found = PeekedKind {
        tag: 0,
        len: 0,
        start: 0,
        end: 0,
    };
    while pos < body.len() {
        let f = next_field(body, &mut pos)?;
        let tag = u32::try_from(f.key >> 3).map_err(|_| malformed("field number out of range"))?;
        if tag == SEQ_TAG || tag == ACKED_TAG {
            continue;
        }
        let field = PeekedKind {
            tag,
            len: f.end - f.at,
            start: f.start,
            end: f.end,
        };
        if found.tag == 0 {
            found = field;
            continue;
        }
        // A second kind field (rare: only then are tags looked up): two
        // known kinds are malformed; an unknown one is skipped, and a
        // known kind after unknown ones is the kind.
        match (is_known_tag(found.tag), is_known_tag(tag)) {
            (true, true) => return Err(malformed("frame carries more than one kind")),
            (false, true) => found = field,
            _ => {}
        }
    }
    Ok(found)
}

/// The size limit of a client kind's body, by its `Frame` field number
/// (`None`: not a kind clients may send).
const fn client_kind_limit(tag: u32) -> Option<usize> {
    let mut i = 0;
    while i < CLIENT_KINDS.len() {
        if CLIENT_KINDS[i].0 == tag {
            return Some(CLIENT_KINDS[i].2);
        }
        i += 1;
    }
    None
}

/// [`decode_publish`](crate::decode_publish) of a frame body a hub
/// received from a client: it returns a frame only for bytes that
/// [`check_client_frame`] passes too (a publish, which has no size limit
/// of its own, without headers), so a hub that gets one need not run that
/// check first; `None`: check the frame, then decode it with prost.
pub fn decode_client_publish(b: &[u8], shared: Option<&bytes::Bytes>) -> Option<crate::Frame> {
    // Were publishes (field 44) given a limit, this would have to apply it.
    const _: () = assert!(
        matches!(client_kind_limit(44), Some(usize::MAX)),
        "a limited publish needs its limit checked here"
    );
    crate::decode_publish(b, shared)
}

/// Checks an encoded frame body received by a hub from a client, before it
/// is decoded: the kind must be one clients may send, within its size limit.
///
/// Kinds unknown to this version are allowed through (they decode to a frame
/// without a kind, at no memory cost, and the hub answers `UNSUPPORTED`);
/// known hub-to-client kinds (`Snapshot`, `ClientList`, `Deliver`, ...) are
/// refused with [`WireError::Rejected`].
pub fn check_client_frame(body: &[u8]) -> Result<(), WireError> {
    let peeked = peek_kind(body)?;
    if peeked.tag == 0 {
        return Ok(());
    }
    match CLIENT_KINDS.iter().find(|(tag, _, _)| *tag == peeked.tag) {
        Some((_, _, max)) if peeked.len > *max => Err(WireError::FrameTooLarge {
            direction: Direction::Inbound,
            len: peeked.len as u64,
            limit: *max,
        }),
        Some(_) if peeked.tag == SESSION_TAG => check_session_inform(peeked, body),
        Some(_) => check_headers_field(peeked, body),
        None if crate::frames::is_known_tag(peeked.tag) => Err(WireError::Rejected {
            kind: crate::frames::tag_name(peeked.tag),
            reason: "clients may not send this kind of frame",
        }),
        None => Ok(()),
    }
}

/// Field number of `headers` inside the kinds that carry them, by the
/// kind's `Frame` field number.
fn headers_field(kind_tag: u32) -> Option<u32> {
    match kind_tag {
        40 => Some(5), // direct
        41 => Some(7), // request
        42 => Some(6), // reply
        43 => Some(4), // broadcast
        44 => Some(6), // publish
        _ => None,
    }
}

/// Counts the headers of a kind that carries them, without decoding: an
/// empty `Header` costs 2 bytes on the wire but a whole struct in memory, so
/// more than [`MAX_HEADERS`](crate::headers::MAX_HEADERS) of them (or more
/// than their byte bound) are refused before decoding.
fn check_headers_field(peeked: PeekedKind, body: &[u8]) -> Result<(), WireError> {
    let Some(field) = headers_field(peeked.tag) else {
        return Ok(());
    };
    let kind = &body[peeked.start..peeked.end];
    let (mut pos, mut count, mut bytes, mut id) = (0usize, 0usize, 0usize, 0u64);
    // Every kind with headers has its correlation id first (a varint).
    let (id_key, headers_key) = (1 << 3, u64::from(field) << 3 | 2);
    while pos < kind.len() {
        let f = next_field(kind, &mut pos)?;
        if f.key == id_key {
            id = f.varint;
        } else if f.key == headers_key {
            count += 1;
            bytes = bytes.saturating_add(f.end - f.start);
        }
    }
    // Each header's encoding adds at most a few bytes of field keys and
    // lengths to its key and value.
    let limit = crate::headers::MAX_HEADER_BYTES + 8 * crate::headers::MAX_HEADERS;
    let reason = if count > crate::headers::MAX_HEADERS {
        format!(
            "{count} headers, more than the {} a frame may carry",
            crate::headers::MAX_HEADERS
        )
    } else if bytes > limit {
        format!("{bytes} bytes of headers, more than the {limit} a frame may carry")
    } else {
        return Ok(());
    };
    Err(WireError::OverLimit {
        kind: crate::frames::tag_name(peeked.tag),
        id,
        reason,
    })
}

/// `Frame.session`'s field number.
const SESSION_TAG: u32 = 80;

/// Most bytes of memory a decoded `Inform`'s events and parameters may
/// take per byte of the session frame that carries them. An event or a
/// parameter costs a few bytes on the wire (an empty one 2) but a whole
/// struct in memory (about 48 bytes, a parameter more in its map), so a
/// frame of empty ones would decode to some 25 times its size; real ones
/// (event codes such as "1 BOOT", parameter names such as
/// "Device.DeviceInfo.SoftwareVersion") stay well under this.
pub const MAX_INFORM_MEMORY_PER_BYTE: usize = 8;

/// Estimated memory of one decoded `Inform` event, bytes.
const EVENT_MEMORY: usize = std::mem::size_of::<crate::proto::Event>();

/// Estimated memory of one decoded `Inform` parameter (its key and value
/// and the map's entry), bytes.
const PARAMETER_MEMORY: usize = 2 * std::mem::size_of::<String>() + 16;

/// Counts the events and parameters of a session frame's `Inform`
/// without decoding: refused when their decoded memory would exceed
/// [`MAX_INFORM_MEMORY_PER_BYTE`] times the frame's size.
fn check_session_inform(peeked: PeekedKind, body: &[u8]) -> Result<(), WireError> {
    // Session.inform = 10; Inform.events = 2, Inform.parameters = 5.
    let session = &body[peeked.start..peeked.end];
    let (mut events, mut parameters) = (0usize, 0usize);
    let mut pos = 0;
    while pos < session.len() {
        let f = next_field(session, &mut pos)?;
        if f.key != 10 << 3 | 2 {
            continue;
        }
        let inform = &session[f.start..f.end];
        let mut at = 0;
        while at < inform.len() {
            match next_field(inform, &mut at)?.key {
                k if k == 2 << 3 | 2 => events += 1,
                k if k == 5 << 3 | 2 => parameters += 1,
                _ => {}
            }
        }
    }
    let memory = events * EVENT_MEMORY + parameters * PARAMETER_MEMORY;
    if memory <= MAX_INFORM_MEMORY_PER_BYTE * body.len() {
        return Ok(());
    }
    Err(WireError::OverLimit {
        kind: "session",
        id: 0,
        reason: format!(
            "its Inform's {events} events and {parameters} parameters would take about {memory} bytes \
             of memory, more than {MAX_INFORM_MEMORY_PER_BYTE} times the frame's {} bytes",
            body.len()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{proto, Frame};
    use prost::Message;

    #[test]
    fn two_known_kinds_are_malformed_unknown_fields_are_skipped() {
        let ping = Frame::from(proto::Ping { nonce: 1 }).encode_to_vec();
        let snapshot = Frame::from(proto::Snapshot {
            repl_seq: 7,
            ..Default::default()
        })
        .encode_to_vec();
        let both = [ping.clone(), snapshot].concat();
        assert!(matches!(
            check_client_frame(&both),
            Err(WireError::Malformed { .. })
        ));
        // An unknown field 99 after a known kind: the kind is the known one.
        let with_unknown = [ping.clone(), vec![0x98, 0x06, 0x2a]].concat();
        assert_eq!(peek_kind(&with_unknown).unwrap().tag, 26);
        assert_eq!(peek_kind(&ping).unwrap().tag, 26);
        // Only an unknown kind (field 200): it is the kind.
        assert_eq!(peek_kind(&[0xC2, 0x0C, 0x00]).unwrap().tag, 200);
    }

    #[test]
    fn client_kind_table_matches_the_proto() {
        for (tag, name, _) in CLIENT_KINDS {
            assert_eq!(crate::frames::tag_name(*tag), *name, "tag {tag}");
        }
    }

    #[test]
    fn peeks_kind_and_length_without_decoding() {
        let mut frame = Frame::publish("a.b", vec![7u8; 100]).with_seq(9);
        frame.acked = 300;
        let body = frame.encode_to_vec();
        let peeked = peek_kind(&body).unwrap();
        assert_eq!(crate::frames::tag_name(peeked.tag), "publish");
        assert!(peeked.len > 100);
        check_client_frame(&body).unwrap();
    }

    #[test]
    fn refuses_hub_only_kinds_from_clients() {
        let list = Frame::from(proto::ClientList {
            id: 1,
            clients: vec![proto::ClientInfo::default(); 1000],
        });
        let err = check_client_frame(&list.encode_to_vec()).unwrap_err();
        assert!(
            matches!(
                err,
                WireError::Rejected {
                    kind: "client_list",
                    ..
                }
            ),
            "{err}"
        );
        let snapshot = Frame::from(proto::Snapshot::default());
        assert!(check_client_frame(&snapshot.encode_to_vec()).is_err());
    }

    #[test]
    fn caps_session_frames() {
        let inform = proto::Session {
            body: Some(proto::session::Body::Inform(proto::Inform {
                events: vec![proto::Event::default(); 600_000],
                ..Default::default()
            })),
            ..Default::default()
        };
        let err = check_client_frame(&Frame::from(inform).encode_to_vec()).unwrap_err();
        assert!(matches!(err, WireError::FrameTooLarge { .. }), "{err}");
    }

    #[test]
    fn bounds_an_informs_decoded_memory_before_decoding() {
        let inform = |events: Vec<proto::Event>, parameters: Vec<(&str, &str)>| {
            Frame::from(proto::Session {
                peer: "acs".into(),
                session_id: 1,
                body: Some(proto::session::Body::Inform(proto::Inform {
                    device_id: "cpe-1".into(),
                    events,
                    parameters: parameters
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect(),
                    ..Default::default()
                })),
            })
            .encode_to_vec()
        };
        let event = |code: &str| proto::Event {
            code: code.into(),
            command_key: String::new(),
        };
        // A real one passes.
        let real = inform(
            vec![event("0 BOOTSTRAP"), event("1 BOOT")],
            vec![
                ("Device.DeviceInfo.SoftwareVersion", "4.2.1"),
                (
                    "Device.ManagementServer.ConnectionRequestURL",
                    "http://10.0.0.7:7547/",
                ),
            ],
        );
        check_client_frame(&real).unwrap();
        // Many short events still pass; 10,000 empty ones, 2 bytes each
        // on the wire, are refused.
        check_client_frame(&inform(vec![event("1 BOOT"); 1_000], vec![])).unwrap();
        let empty = inform(vec![proto::Event::default(); 10_000], vec![]);
        assert!(matches!(
            check_client_frame(&empty),
            Err(WireError::OverLimit {
                kind: "session",
                ..
            })
        ));
        // Parameters likewise: empty keys and values cost a map entry each.
        let keys: Vec<String> = (0..5_000).map(|i| format!("{i}")).collect();
        let params = keys.iter().map(|k| (k.as_str(), "")).collect();
        assert!(check_client_frame(&inform(vec![], params)).is_err());
    }

    #[test]
    fn caps_headers_before_decoding() {
        let header = proto::Header {
            key: "k".into(),
            value: bytes::Bytes::from_static(b"v"),
        };
        let mut publish = proto::Publish {
            id: 5,
            topic: "a".into(),
            headers: vec![header.clone(); crate::headers::MAX_HEADERS],
            ..Default::default()
        };
        check_client_frame(&Frame::from(publish.clone()).encode_to_vec()).unwrap();
        publish.headers.push(header.clone());
        let err = check_client_frame(&Frame::from(publish).encode_to_vec()).unwrap_err();
        // Named as what it is, with the frame's id for the refusal.
        match &err {
            WireError::OverLimit { kind, id, reason } => {
                assert_eq!((*kind, *id), ("publish", 5));
                assert!(
                    reason.starts_with("65 headers, more than the 64"),
                    "{reason}"
                );
            }
            other => panic!("{other}"),
        }
        let empty = proto::Direct {
            to: "x".into(),
            headers: vec![proto::Header::default(); 100_000],
            ..Default::default()
        };
        assert!(check_client_frame(&Frame::from(empty).encode_to_vec()).is_err());
        let big = proto::Request {
            to: "x".into(),
            headers: vec![proto::Header {
                key: "k".into(),
                value: vec![0u8; 2 * crate::headers::MAX_HEADER_BYTES].into(),
            }],
            ..Default::default()
        };
        assert!(check_client_frame(&Frame::from(big).encode_to_vec()).is_err());
        // Envelope fields after the kind do not count as the kind's.
        let direct = Frame::from(proto::Direct {
            to: "x".into(),
            headers: vec![header; 2],
            ..Default::default()
        });
        let mut body = direct.encode_to_vec();
        body.extend_from_slice(&[0x08, 0x05, 0x10, 0x07]);
        check_client_frame(&body).unwrap();
        assert_eq!(Frame::decode(&body[..]).unwrap().seq, 5);
    }

    #[test]
    fn refuses_two_kinds_and_garbage() {
        let mut body = Frame::ok(1).encode_to_vec();
        body.extend(Frame::ok(2).encode_to_vec());
        assert!(peek_kind(&body).is_err());
        assert!(peek_kind(&[0xff; 11]).is_err());
        assert!(peek_kind(&[0x0a, 0x05, 1]).is_err());
        assert!(peek_kind(&[0x0b]).is_err(), "group wire type");
    }

    #[test]
    fn unknown_kinds_pass_and_decode_to_no_kind() {
        // Field 500, length-delimited, 3 bytes.
        let body = [0xa2, 0x1f, 0x03, 1, 2, 3];
        check_client_frame(&body).unwrap();
        assert_eq!(Frame::decode(&body[..]).unwrap().kind, None);
    }
}
