//! The PROXY protocol, version 2 (`listen on … proxy-v2`): a load balancer in front of smtpd
//! opens each connection with a binary header that names the real client. It is read before
//! anything else; a connection without a valid header is closed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12 bytes every version-2 header starts with.
pub const SIGNATURE: [u8; 12] = [
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
];

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Bytes the header took (the rest of the input is SMTP).
    pub len: usize,
    /// The client, for a PROXY command over TCP; `None` for LOCAL (health checks) or an
    /// address family the header does not carry (the connection's own address stands).
    pub source: Option<SocketAddr>,
}

/// Why a header is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    BadSignature,
    BadVersion,
    BadCommand,
    Truncated,
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProxyError::BadSignature => "invalid signature",
            ProxyError::BadVersion => "unsupported version",
            ProxyError::BadCommand => "unsupported command",
            ProxyError::Truncated => "address block too short",
        })
    }
}

/// Parse a header at the start of `input`: `Ok(None)` while more bytes are needed.
pub fn parse(input: &[u8]) -> Result<Option<Header>, ProxyError> {
    let n = input.len().min(SIGNATURE.len());
    if input[..n] != SIGNATURE[..n] {
        return Err(ProxyError::BadSignature);
    }
    if input.len() < 16 {
        return Ok(None);
    }
    let ver_cmd = input[12];
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::BadVersion);
    }
    let command = ver_cmd & 0x0f;
    if command > 1 {
        return Err(ProxyError::BadCommand);
    }
    let fam = input[13];
    let body_len = u16::from_be_bytes([input[14], input[15]]) as usize;
    if input.len() < 16 + body_len {
        return Ok(None);
    }
    let body = &input[16..16 + body_len];
    let len = 16 + body_len;
    if command == 0 {
        return Ok(Some(Header { len, source: None }));
    }
    let source = match fam {
        // TCP over IPv4: src addr, dst addr, src port, dst port.
        0x11 => {
            let b: &[u8; 12] = body
                .get(..12)
                .and_then(|b| b.try_into().ok())
                .ok_or(ProxyError::Truncated)?;
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            Some(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([b[8], b[9]]),
            ))
        }
        // TCP over IPv6.
        0x21 => {
            let b: &[u8; 36] = body
                .get(..36)
                .and_then(|b| b.try_into().ok())
                .ok_or(ProxyError::Truncated)?;
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[..16]);
            Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(a)),
                u16::from_be_bytes([b[32], b[33]]),
            ))
        }
        _ => None,
    };
    Ok(Some(Header { len, source }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(src: [u8; 4], port: u16) -> Vec<u8> {
        let mut h = SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0, 12]);
        h.extend_from_slice(&src);
        h.extend_from_slice(&[127, 0, 0, 1]);
        h.extend_from_slice(&port.to_be_bytes());
        h.extend_from_slice(&25u16.to_be_bytes());
        h
    }

    #[test]
    fn ipv4_header_then_smtp() {
        let mut input = v4([192, 0, 2, 7], 40000);
        input.extend_from_slice(b"EHLO x\r\n");
        let h = parse(&input).unwrap().unwrap();
        assert_eq!(h.len, 28);
        assert_eq!(h.source, Some("192.0.2.7:40000".parse().unwrap()));
        assert_eq!(&input[h.len..], b"EHLO x\r\n");
    }

    #[test]
    fn partial_local_and_invalid() {
        let full = v4([192, 0, 2, 7], 1);
        for i in 0..full.len() {
            assert_eq!(parse(&full[..i]), Ok(None), "prefix {i}");
        }
        let mut local = SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(
            parse(&local),
            Ok(Some(Header {
                len: 16,
                source: None
            }))
        );
        assert_eq!(
            parse(b"EHLO client.example\r\n"),
            Err(ProxyError::BadSignature)
        );
        let mut bad = full.clone();
        bad[12] = 0x11;
        assert_eq!(parse(&bad), Err(ProxyError::BadVersion));
        let mut short = SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert_eq!(parse(&short), Err(ProxyError::Truncated));
    }

    #[test]
    fn ipv6_header() {
        let mut h = SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x21, 0, 36]);
        let src: Ipv6Addr = "2001:db8::5".parse().unwrap();
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        h.extend_from_slice(&[0x9c, 0x40, 0, 25]);
        assert_eq!(
            parse(&h).unwrap().unwrap().source,
            Some("[2001:db8::5]:40000".parse().unwrap())
        );
    }
}
