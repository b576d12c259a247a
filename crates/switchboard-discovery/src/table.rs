//! The operating system's table of listening TCP sockets.
//!
//! On Linux this reads `/proc/net/tcp` and `/proc/net/tcp6`, keeping the
//! entries in state `0A` (LISTEN). Other systems report
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

/// Reads the listening sockets of all users.
pub fn listening() -> Result<Table, TableError> {
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
        let t = listening().unwrap();
        assert!(t
            .listeners
            .iter()
            .any(|x| x.addr == addr && x.uid == crate::current_uid()));
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
