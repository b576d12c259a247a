//! A registered client's info as the registry keeps it: one allocation
//! holding what its [`proto::ClientInfo`] holds (five strings and a
//! 144-byte struct, six allocations), read only when it registers,
//! resumes, leaves or is listed, and for its principal by the admission
//! seam. An idle hub's memory per client; `an_info_is_one_small_allocation`.
//!
//! Layout of the bytes: the connection time (`u64`, little-endian), the
//! uid (`u32`), a flags byte ([`RELIABLE`], [`LISTEN`], [`HAS_UID`]), the
//! transport (1 + its index in [`TRANSPORTS`], or 0: stored as text),
//! then each text as a LEB128 length and its bytes: principal, client id,
//! address, agent and, only when not one of [`TRANSPORTS`], the transport.

use switchboard_wire::proto;

use super::admission::ClientRef;
use super::remote::PORT_TRANSPORT;

/// The transports the hub names itself, each stored as one byte.
const TRANSPORTS: [&str; 8] = [
    "tcp",
    "tls",
    "unix",
    "ws",
    "wss",
    "http",
    "memory",
    PORT_TRANSPORT,
];

/// Flag: `ClientInfo.reliable`.
const RELIABLE: u8 = 1;
/// Flag: `ClientInfo.listen`.
const LISTEN: u8 = 2;
/// Flag: `ClientInfo.uid` is set.
const HAS_UID: u8 = 4;
/// Bytes before the texts.
const HEAD: usize = 14;

/// Bytes of `n` as a LEB128 length.
fn varint_len(n: usize) -> usize {
    (usize::BITS - n.leading_zeros()).max(1).div_ceil(7) as usize
}

/// A client's [`proto::ClientInfo`], packed (see the module docs).
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Info {
    bytes: Box<[u8]>,
}

/// The texts of an [`Info`], in their stored order.
struct Texts<'a> {
    principal: &'a str,
    client_id: &'a str,
    addr: &'a str,
    agent: &'a str,
    transport: &'a str,
}

impl Info {
    /// Packs `info`.
    pub fn new(info: &proto::ClientInfo) -> Info {
        let known = TRANSPORTS.iter().position(|t| *t == info.transport);
        let texts = [
            info.principal.as_str(),
            info.client_id.as_str(),
            info.addr.as_str(),
            info.agent.as_str(),
            info.transport.as_str(),
        ];
        let texts = &texts[..if known.is_some() { 4 } else { 5 }];
        let len = HEAD
            + texts
                .iter()
                .map(|t| varint_len(t.len()) + t.len())
                .sum::<usize>();
        let mut bytes = Vec::with_capacity(len);
        bytes.extend_from_slice(&info.connected_at_ms.to_le_bytes());
        bytes.extend_from_slice(&info.uid.unwrap_or(0).to_le_bytes());
        let flags = (if info.reliable { RELIABLE } else { 0 })
            | (if info.listen { LISTEN } else { 0 })
            | (if info.uid.is_some() { HAS_UID } else { 0 });
        bytes.push(flags);
        bytes.push(known.map_or(0, |i| i as u8 + 1));
        for text in texts {
            let mut n = text.len();
            while n >= 0x80 {
                bytes.push((n as u8) | 0x80);
                n >>= 7;
            }
            bytes.push(n as u8);
            bytes.extend_from_slice(text.as_bytes());
        }
        debug_assert_eq!(bytes.len(), len);
        Info {
            bytes: bytes.into_boxed_slice(),
        }
    }

    fn flags(&self) -> u8 {
        self.bytes.get(12).copied().unwrap_or(0)
    }

    /// The texts, decoded. The bytes were written by [`Info::new`] from
    /// valid strings: a part that would not decode reads as empty.
    fn texts(&self) -> Texts<'_> {
        let mut rest = self.bytes.get(HEAD..).unwrap_or_default();
        let mut next = || {
            let mut n = 0usize;
            let mut shift = 0;
            while let Some((&b, tail)) = rest.split_first() {
                rest = tail;
                n |= usize::from(b & 0x7f) << shift;
                shift += 7;
                if b & 0x80 == 0 || shift >= usize::BITS {
                    break;
                }
            }
            let (text, tail) = rest.split_at(n.min(rest.len()));
            rest = tail;
            std::str::from_utf8(text).unwrap_or_default()
        };
        let (principal, client_id, addr, agent) = (next(), next(), next(), next());
        let code = self.bytes.get(13).copied().unwrap_or(0);
        let transport = match TRANSPORTS.get(usize::from(code).wrapping_sub(1)) {
            Some(known) => known,
            None => next(),
        };
        Texts {
            principal,
            client_id,
            addr,
            agent,
            transport,
        }
    }

    /// Its client id.
    pub fn client_id(&self) -> &str {
        self.texts().client_id
    }

    /// Whether it asked for reliable delivery.
    pub fn reliable(&self) -> bool {
        self.flags() & RELIABLE != 0
    }

    /// Whether it announced the "listen" feature.
    pub fn listen(&self) -> bool {
        self.flags() & LISTEN != 0
    }

    /// What [`Admission::admit`](super::admission::Admission::admit) sees.
    pub fn view(&self) -> ClientRef<'_> {
        let t = self.texts();
        ClientRef {
            client_id: t.client_id,
            principal: t.principal,
            transport: t.transport,
            uid: self.uid(),
        }
    }

    fn uid(&self) -> Option<u32> {
        let uid = self.bytes.get(8..12)?.try_into().ok()?;
        (self.flags() & HAS_UID != 0).then(|| u32::from_le_bytes(uid))
    }

    /// Unpacked (for listings, presence events, snapshots and the rare
    /// paths that need the wire's type).
    pub fn to_proto(&self) -> proto::ClientInfo {
        let t = self.texts();
        let at = self.bytes.get(..8).and_then(|b| b.try_into().ok());
        proto::ClientInfo {
            client_id: t.client_id.to_owned(),
            transport: t.transport.to_owned(),
            addr: t.addr.to_owned(),
            connected_at_ms: at.map_or(0, u64::from_le_bytes),
            agent: t.agent.to_owned(),
            reliable: self.reliable(),
            listen: self.listen(),
            principal: t.principal.to_owned(),
            uid: self.uid(),
        }
    }
}

impl std::fmt::Debug for Info {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.to_proto().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> proto::ClientInfo {
        proto::ClientInfo {
            client_id: "worker-7".into(),
            transport: "tcp".into(),
            addr: "127.0.0.1:40000".into(),
            connected_at_ms: 1_765_000_000_123,
            agent: "switchboard-rust/0.1".into(),
            reliable: true,
            listen: false,
            principal: "ops".into(),
            uid: Some(1000),
        }
    }

    #[test]
    fn every_field_comes_back_as_it_went_in() {
        let long = "é".repeat(300);
        let cases = [
            full(),
            proto::ClientInfo::default(),
            proto::ClientInfo {
                transport: "carrier-pigeon".into(),
                agent: long.clone(),
                principal: long,
                listen: true,
                reliable: false,
                uid: Some(0),
                connected_at_ms: u64::MAX,
                ..full()
            },
            proto::ClientInfo {
                transport: PORT_TRANSPORT.into(),
                uid: None,
                ..full()
            },
        ];
        for info in cases {
            let packed = Info::new(&info);
            assert_eq!(packed.to_proto(), info);
            assert_eq!(packed.client_id(), info.client_id);
            assert_eq!(packed.reliable(), info.reliable);
            assert_eq!(packed.listen(), info.listen);
            assert_eq!(packed.view(), ClientRef::from(&info));
        }
    }

    /// A typical client's info (id, address, agent, a known transport)
    /// takes one allocation of under 64 bytes, not a 144-byte struct and
    /// five strings.
    #[test]
    fn an_info_is_one_small_allocation() {
        let packed = Info::new(&full());
        let principal = 1 + 3;
        let texts = principal + 1 + 8 + 1 + 15 + 1 + 20;
        assert_eq!(packed.bytes.len(), HEAD + texts);
        assert!(packed.bytes.len() <= 64, "{} bytes", packed.bytes.len());
        assert_eq!(std::mem::size_of::<Info>(), 16);
    }
}
