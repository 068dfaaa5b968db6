//! The host names a certificate answers for, and how a client's SNI name is matched
//! against them.
//!
//! A listener with several certificates picks one by the name the client asked for (SNI).
//! rustls does not expose a certificate's names, so this file reads them from the DER
//! itself: the subjectAltName dNSName entries, or the subject's commonName when the
//! certificate has no dNSName at all (certificates made with a bare
//! `openssl req -x509 -subj /CN=…` have only a CN, and libtls, which later OpenSMTPD versions
//! use for the same choice, falls back to the CN too).
//!
//! The reader is deliberately small: it walks tag-length-value triples and gives up (no
//! names) on anything it does not understand. Certificates come from files the
//! administrator named, but a broken one must still never panic the server.

/// How a certificate name matched a requested host name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum NameMatch {
    /// `*.example.org` matched `mail.example.org`.
    Wildcard,
    /// The names are equal (ignoring ASCII case and a trailing dot).
    Exact,
}

/// The DNS names of an end-entity certificate (lower-cased), in certificate order: the
/// subjectAltName dNSName entries, else the subject commonName. Empty when the DER cannot
/// be read.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    read_names(der).unwrap_or_default()
}

/// Whether certificate name `pattern` covers host `host`. A wildcard is honoured only as
/// the whole left-most label (`*.example.org`), covers exactly one label, and needs at
/// least two labels after it (`*.org` covers nothing), as RFC 6125 and libtls have it.
pub fn match_name(pattern: &str, host: &str) -> Option<NameMatch> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let pattern = pattern.strip_suffix('.').unwrap_or(pattern);
    if host.is_empty() || pattern.is_empty() {
        return None;
    }
    if pattern.eq_ignore_ascii_case(host) {
        return Some(NameMatch::Exact);
    }
    let rest = pattern.strip_prefix("*.")?;
    if !rest.contains('.') || rest.contains('*') {
        return None;
    }
    let (label, host_rest) = host.split_once('.')?;
    if label.is_empty() || label == "*" {
        return None;
    }
    host_rest
        .eq_ignore_ascii_case(rest)
        .then_some(NameMatch::Wildcard)
}

// DER tags used below.
const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
const INTEGER: u8 = 0x02;
const VERSION: u8 = 0xa0; // [0] EXPLICIT
const EXTENSIONS: u8 = 0xa3; // [3] EXPLICIT
const DNS_NAME: u8 = 0x82; // GeneralName dNSName [2] IMPLICIT IA5String
/// 2.5.4.3 commonName.
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
/// 2.5.29.17 subjectAltName.
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// One tag-length-value element: its tag, its contents and what follows it.
fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    // Multi-byte tags never occur in the parts of a certificate read here.
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, after) = rest.split_at_checked(count)?;
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    let (value, after) = rest.split_at_checked(len)?;
    Some((tag, value, after))
}

/// Reads one element that must carry `tag`.
fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, value, rest) = read_tlv(input)?;
    (t == tag).then_some((value, rest))
}

fn read_names(der: &[u8]) -> Option<Vec<String>> {
    let (cert, _) = expect(der, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    let mut rest = tbs;
    if let Some((VERSION, _, after)) = read_tlv(rest) {
        rest = after;
    }
    let (_serial, after) = expect(rest, INTEGER)?;
    let (_signature, after) = expect(after, SEQUENCE)?;
    let (_issuer, after) = expect(after, SEQUENCE)?;
    let (_validity, after) = expect(after, SEQUENCE)?;
    let (subject, after) = expect(after, SEQUENCE)?;
    let (_spki, mut rest) = expect(after, SEQUENCE)?;
    let mut dns = Vec::new();
    // issuerUniqueID [1], subjectUniqueID [2], extensions [3], in that order.
    while let Some((tag, value, after)) = read_tlv(rest) {
        rest = after;
        if tag == EXTENSIONS {
            let (list, _) = expect(value, SEQUENCE)?;
            dns = alt_names(list);
        }
    }
    if dns.is_empty() {
        return Some(common_name(subject).into_iter().collect());
    }
    Some(dns)
}

/// The dNSName entries of the subjectAltName extension, if there is one.
fn alt_names(mut extensions: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    while let Some((SEQUENCE, ext, after)) = read_tlv(extensions) {
        extensions = after;
        let Some((oid, mut body)) = expect(ext, OID) else {
            continue;
        };
        if oid != OID_SUBJECT_ALT_NAME {
            continue;
        }
        if let Some((BOOLEAN, _, after)) = read_tlv(body) {
            body = after;
        }
        let Some((octets, _)) = expect(body, OCTET_STRING) else {
            continue;
        };
        let Some((mut general_names, _)) = expect(octets, SEQUENCE) else {
            continue;
        };
        while let Some((tag, value, after)) = read_tlv(general_names) {
            general_names = after;
            if tag == DNS_NAME
                && let Ok(name) = std::str::from_utf8(value)
                && !name.is_empty()
            {
                names.push(name.to_ascii_lowercase());
            }
        }
    }
    names
}

/// The last commonName of a subject Name (the most specific one).
fn common_name(mut name: &[u8]) -> Option<String> {
    let mut found = None;
    while let Some((SET, rdn, after)) = read_tlv(name) {
        name = after;
        let mut attributes = rdn;
        while let Some((SEQUENCE, attribute, after)) = read_tlv(attributes) {
            attributes = after;
            let Some((oid, value)) = expect(attribute, OID) else {
                continue;
            };
            if oid != OID_COMMON_NAME {
                continue;
            }
            // UTF8String, PrintableString, TeletexString or IA5String carry host names.
            if let Some((0x0c | 0x13 | 0x14 | 0x16, text, _)) = read_tlv(value)
                && let Ok(text) = std::str::from_utf8(text)
                && !text.is_empty()
            {
                found = Some(text.to_ascii_lowercase());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_wildcard_names() {
        assert_eq!(
            match_name("mail.example.org", "MAIL.example.org."),
            Some(NameMatch::Exact)
        );
        assert_eq!(
            match_name("*.example.org", "mail.example.org"),
            Some(NameMatch::Wildcard)
        );
        assert_eq!(match_name("*.example.org", "example.org"), None);
        assert_eq!(match_name("*.example.org", "a.b.example.org"), None);
        assert_eq!(match_name("*.org", "example.org"), None);
        assert_eq!(match_name("mail.*.org", "mail.example.org"), None);
        assert_eq!(match_name("*.example.org", ".example.org"), None);
        assert_eq!(match_name("", ""), None);
    }

    #[test]
    fn garbage_yields_no_names() {
        assert!(certificate_names(b"").is_empty());
        assert!(certificate_names(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_empty());
        assert!(certificate_names(&[0x30, 0x03, 0x30, 0x01]).is_empty());
        assert!(certificate_names(&[0x1f, 0x00]).is_empty());
    }

    #[test]
    fn truncated_certificates_never_panic() {
        // A hand-made minimal certificate: tbs with serial, sigalg, issuer, validity,
        // subject CN=a.test, spki; then every prefix of it.
        let cn = [
            0x31, 0x0f, 0x30, 0x0d, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x06, b'a', b'.', b't',
            b'e', b's', b't',
        ];
        let mut subject = vec![0x30, cn.len() as u8];
        subject.extend_from_slice(&cn);
        let mut tbs_body = vec![0x02, 0x01, 0x01, 0x30, 0x00, 0x30, 0x00, 0x30, 0x00];
        tbs_body.extend_from_slice(&subject);
        tbs_body.extend_from_slice(&[0x30, 0x00]);
        let mut tbs = vec![0x30, tbs_body.len() as u8];
        tbs.extend_from_slice(&tbs_body);
        let mut cert = vec![0x30, tbs.len() as u8];
        cert.extend_from_slice(&tbs);
        assert_eq!(certificate_names(&cert), vec!["a.test".to_string()]);
        for end in 0..cert.len() {
            let _ = certificate_names(&cert[..end]);
        }
    }
}
