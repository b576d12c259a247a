//! The operating system's table of listening TCP sockets.
//!
//! On Linux this asks the kernel over netlink `sock_diag` for the TCP
//! sockets in state LISTEN (the kernel walks only its listening table, so
//! the cost does not grow with the number of established connections),
//! and falls back to parsing `/proc/net/tcp` and `/proc/net/tcp6` (entries
//! in state `0A`) when netlink is unavailable. Other systems report
//! [`TableError::Unsupported`] and discovery goes on with the scan.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A listening socket from the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    /// Local address it listens on.
    pub addr: SocketAddr,
    /// Owner's uid.
    pub uid: u32,
}

/// Why the listening table could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    /// This operating system has no supported table reader.
    #[error("no listening-socket table reader on this operating system; discovery falls back to the scan")]
    Unsupported,
    /// Reading the table failed.
    #[error("cannot read {path}: {source}; is /proc mounted?")]
    Io {
        /// The file.
        path: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

/// The table's listening sockets, with the number of lines that could not
/// be parsed (skipped).
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// Listening sockets.
    pub listeners: Vec<Listener>,
    /// Lines skipped as malformed.
    pub skipped: usize,
}

/// Reads the listening sockets of all users: netlink first, then `/proc`.
pub fn listening() -> Result<Table, TableError> {
    #[cfg(target_os = "linux")]
    {
        match netlink::listening() {
            Ok(t) => Ok(t),
            Err(e) => {
                tracing::debug!(error = %e, "sock_diag unavailable, reading /proc/net/tcp");
                listening_proc()
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err(TableError::Unsupported)
    }
}

/// Reads the listening sockets of all users from `/proc/net/tcp{,6}`.
pub fn listening_proc() -> Result<Table, TableError> {
    #[cfg(target_os = "linux")]
    {
        let mut table = Table::default();
        let mut any = false;
        let mut first_err = None;
        for (path, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    any = true;
                    parse_into(&text, v6, &mut table);
                }
                // tcp6 is missing when IPv6 is disabled.
                Err(e) if v6 && e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => first_err = Some(TableError::Io { path, source }),
            }
        }
        match (any, first_err) {
            (false, Some(e)) => Err(e),
            _ => Ok(table),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err(TableError::Unsupported)
    }
}

#[cfg(target_os = "linux")]
mod netlink {
    //! Netlink `sock_diag` (`SOCK_DIAG_BY_FAMILY` dump of `inet_diag_req_v2`
    //! with the LISTEN state only).

    use super::{Listener, Table};
    use std::io;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const TCP_LISTEN: u32 = 10;
    const NLMSG_HDR: usize = 16;
    /// `inet_diag_msg`: family, state, timer, retrans, 48-byte socket id,
    /// expires, rqueue, wqueue, uid, inode.
    const DIAG_MSG: usize = 72;
    /// Upper bound on one dump, against a misbehaving kernel interface.
    const MAX_ENTRIES: usize = 1 << 20;

    pub(super) fn listening() -> io::Result<Table> {
        // SAFETY: plain socket(2) call; the result is checked below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut table = Table::default();
        dump(&fd, 1, libc::AF_INET as u8, &mut table)?;
        // Without IPv6 support the second dump fails; IPv4 alone is fine.
        if let Err(e) = dump(&fd, 2, libc::AF_INET6 as u8, &mut table) {
            tracing::debug!(error = %e, "no IPv6 listening table");
        }
        Ok(table)
    }

    fn request(seq: u32, family: u8) -> [u8; NLMSG_HDR + 56] {
        let mut req = [0u8; NLMSG_HDR + 56];
        let len = req.len() as u32;
        req[0..4].copy_from_slice(&len.to_ne_bytes());
        req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
        req[6..8].copy_from_slice(&flags.to_ne_bytes());
        req[8..12].copy_from_slice(&seq.to_ne_bytes());
        // pid 0: the kernel. inet_diag_req_v2 follows.
        req[16] = family;
        req[17] = libc::IPPROTO_TCP as u8;
        // idiag_ext = 0, pad = 0.
        req[20..24].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
        // The socket id (48 bytes) stays zero: no filter.
        req
    }

    fn dump(fd: &OwnedFd, seq: u32, family: u8, table: &mut Table) -> io::Result<()> {
        let req = request(seq, family);
        // SAFETY: `req` is a valid buffer of `req.len()` bytes; a zeroed
        // sockaddr_nl addresses the kernel.
        let sent = unsafe {
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            libc::sendto(
                fd.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: `buf` is a valid, writable buffer of `buf.len()` bytes.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "netlink closed",
                ));
            }
            if parse(&buf[..n as usize], seq, family, table)? {
                return Ok(());
            }
            if table.listeners.len() > MAX_ENTRIES {
                return Err(io::Error::other("netlink dump too long"));
            }
        }
    }

    /// Parses one datagram of the dump; `Ok(true)` at its end.
    pub(super) fn parse(
        mut data: &[u8],
        seq: u32,
        family: u8,
        table: &mut Table,
    ) -> io::Result<bool> {
        let bad =
            |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("netlink: {what}"));
        while data.len() >= NLMSG_HDR {
            let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
            let kind = u16::from_ne_bytes([data[4], data[5]]);
            let msg_seq = u32::from_ne_bytes([data[8], data[9], data[10], data[11]]);
            if len < NLMSG_HDR || len > data.len() {
                return Err(bad("bad message length"));
            }
            let body = &data[NLMSG_HDR..len];
            if msg_seq == seq {
                match kind {
                    NLMSG_DONE => return Ok(true),
                    NLMSG_ERROR => {
                        let code = body
                            .get(0..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .unwrap_or(-libc::EINVAL);
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    SOCK_DIAG_BY_FAMILY => match parse_msg(body, family) {
                        Some(l) => table.listeners.push(l),
                        None => table.skipped += 1,
                    },
                    _ => {}
                }
            }
            let aligned = (len + 3) & !3;
            data = data.get(aligned..).unwrap_or(&[]);
        }
        Ok(false)
    }

    fn parse_msg(body: &[u8], family: u8) -> Option<Listener> {
        if body.len() < DIAG_MSG || body[0] != family {
            return None;
        }
        let id = &body[4..52];
        let port = u16::from_be_bytes([id[0], id[1]]);
        let ip = if family == libc::AF_INET as u8 {
            IpAddr::V4(Ipv4Addr::new(id[4], id[5], id[6], id[7]))
        } else {
            let mut b = [0u8; 16];
            b.copy_from_slice(&id[4..20]);
            IpAddr::V6(Ipv6Addr::from(b))
        };
        let uid = u32::from_ne_bytes([body[64], body[65], body[66], body[67]]);
        Some(Listener {
            addr: SocketAddr::new(ip, port),
            uid,
        })
    }
}

/// Parses the text of `/proc/net/tcp` (`v6 = false`) or `/proc/net/tcp6`
/// (`v6 = true`), appending LISTEN entries to `table`. Malformed lines are
/// counted and skipped.
pub fn parse_into(text: &str, v6: bool, table: &mut Table) {
    for line in text.lines().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line, v6) {
            Some(Some(l)) => table.listeners.push(l),
            Some(None) => {}
            None => table.skipped += 1,
        }
    }
}

/// `None`: malformed; `Some(None)`: not listening.
fn parse_line(line: &str, v6: bool) -> Option<Option<Listener>> {
    let mut fields = line.split_ascii_whitespace();
    let _slot = fields.next()?;
    let local = fields.next()?;
    let _remote = fields.next()?;
    let state = fields.next()?;
    let _queues = fields.next()?;
    let _timer = fields.next()?;
    let _retransmits = fields.next()?;
    let uid: u32 = fields.next()?.parse().ok()?;
    if u8::from_str_radix(state, 16).ok()? != 0x0A {
        return Some(None);
    }
    let (ip_hex, port_hex) = local.split_once(':')?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    let ip = if v6 {
        if ip_hex.len() != 32 {
            return None;
        }
        // Four 32-bit words, each in host byte order.
        let mut bytes = [0u8; 16];
        for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
            let word = u32::from_str_radix(ip_hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(bytes))
    } else {
        if ip_hex.len() != 8 {
            return None;
        }
        let word = u32::from_str_radix(ip_hex, 16).ok()?;
        IpAddr::V4(Ipv4Addr::from(word.to_ne_bytes()))
    };
    Some(Some(Listener {
        addr: SocketAddr::new(ip, port),
        uid,
    }))
}

/// Whether a listener on `local` accepts connections to `target`: the
/// same address, or an unspecified address of the same family (an IPv6
/// `::` listener usually accepts IPv4 too).
pub fn reachable(local: IpAddr, target: IpAddr) -> bool {
    local == target
        || match (local, target) {
            (IpAddr::V4(l), IpAddr::V4(_)) => l.is_unspecified(),
            (IpAddr::V6(l), _) => l.is_unspecified(),
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_v4(ip: Ipv4Addr) -> String {
        format!("{:08X}", u32::from_ne_bytes(ip.octets()))
    }

    fn hex_v6(ip: Ipv6Addr) -> String {
        ip.octets()
            .chunks_exact(4)
            .map(|c| format!("{:08X}", u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
            .collect()
    }

    #[test]
    fn parses_listeners_and_skips_junk() {
        let text = format!(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
             0: {}:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1 0 100 0 0 10 0\n\
             1: {}:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 2 1 0 100 0 0 10 0\n\
             2: {}:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0\n\
             3: garbage line\n\
             4: ZZZZZZZZ:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0\n",
            hex_v4(Ipv4Addr::LOCALHOST),
            hex_v4(Ipv4Addr::LOCALHOST),
            hex_v4(Ipv4Addr::UNSPECIFIED),
        );
        let mut t = Table::default();
        parse_into(&text, false, &mut t);
        assert_eq!(
            t.listeners,
            vec![
                Listener {
                    addr: "127.0.0.1:8080".parse().unwrap(),
                    uid: 1000
                },
                Listener {
                    addr: "0.0.0.0:80".parse().unwrap(),
                    uid: 0
                },
            ]
        );
        assert_eq!(t.skipped, 2);
    }

    #[test]
    fn parses_v6() {
        let text = format!(
            "header\n   0: {}:D431 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1\n",
            hex_v6(Ipv6Addr::LOCALHOST)
        );
        let mut t = Table::default();
        parse_into(&text, true, &mut t);
        assert_eq!(t.listeners[0].addr, "[::1]:54321".parse().unwrap());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn real_table_lists_our_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let connected = std::net::TcpStream::connect(addr).unwrap();
        for t in [netlink::listening().unwrap(), listening_proc().unwrap()] {
            assert!(t
                .listeners
                .iter()
                .any(|x| x.addr == addr && x.uid == crate::current_uid()));
            // Only listeners, not the connection's two ends.
            let local = connected.local_addr().unwrap();
            assert!(!t.listeners.iter().any(|x| x.addr == local));
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn netlink_parser_rejects_garbage() {
        let mut t = Table::default();
        // A length running past the datagram.
        let mut msg = vec![0u8; 20];
        msg[0..4].copy_from_slice(&100u32.to_ne_bytes());
        assert!(netlink::parse(&msg, 1, libc::AF_INET as u8, &mut t).is_err());
        // A short diag message is skipped, not trusted.
        let mut msg = vec![0u8; 24];
        msg[0..4].copy_from_slice(&24u32.to_ne_bytes());
        msg[4..6].copy_from_slice(&20u16.to_ne_bytes());
        msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
        assert!(!netlink::parse(&msg, 1, libc::AF_INET as u8, &mut t).unwrap());
        assert_eq!(t.skipped, 1);
        assert!(t.listeners.is_empty());
    }

    #[test]
    fn reachability() {
        let v4: IpAddr = Ipv4Addr::LOCALHOST.into();
        let v6: IpAddr = Ipv6Addr::LOCALHOST.into();
        assert!(reachable(v4, v4));
        assert!(reachable(Ipv4Addr::UNSPECIFIED.into(), v4));
        assert!(reachable(Ipv6Addr::UNSPECIFIED.into(), v4));
        assert!(reachable(Ipv6Addr::UNSPECIFIED.into(), v6));
        assert!(!reachable(Ipv4Addr::UNSPECIFIED.into(), v6));
        assert!(!reachable(v6, v4));
        assert!(!reachable(Ipv4Addr::new(127, 0, 0, 2).into(), v4));
    }
}
