//! The `Received:` header smtpd writes at the top of every message (spec §8.7), and the date
//! format it and the added `Date:` header use.
//!
//! The layout is OpenSMTPD's to the byte (continuation lines start with one TAB), because
//! mail filters and humans parse these headers, and because differential tests against
//! OpenSMTPD compare delivered files.

use super::address::Mailaddr;
use super::ids::MsgId;
use super::params::{ClientCert, ClientInfo, TlsInfo};

const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Formats a time like OpenSMTPD's `time_to_text`:
/// `Day, D Mon YYYY HH:MM:SS +HHMM (ZONE)`, English names, day of month not padded.
/// `unix` is seconds since the epoch, `utc_offset` the local offset east of UTC in seconds,
/// `zone` its abbreviation (`UTC`, `CET`, ...). The caller supplies the local time zone; this
/// function does no I/O.
pub fn time_to_text(unix: i64, utc_offset: i32, zone: &str) -> String {
    let local = unix.saturating_add(i64::from(utc_offset));
    let days = local.div_euclid(86_400);
    let secs = local.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let weekday = (days + 4).rem_euclid(7) as usize;
    let sign = if utc_offset >= 0 { '+' } else { '-' };
    let off = utc_offset.unsigned_abs();
    format!(
        "{}, {} {} {} {:02}:{:02}:{:02} {}{:02}{:02} ({})",
        DAYS[weekday],
        day,
        MONTHS[(month - 1) as usize],
        year,
        secs / 3600,
        secs % 3600 / 60,
        secs % 60,
        sign,
        off / 3600,
        off % 3600 / 60,
        zone
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Everything that goes into one Received header.
#[derive(Clone, Copy, Debug)]
pub struct ReceivedFields<'a> {
    /// The HELO/EHLO argument.
    pub helo: &'a str,
    /// Client address and reverse name.
    pub client: &'a ClientInfo,
    /// `mask-src`: omit the `from` clause.
    pub mask_source: bool,
    /// The session's server name (`by NAME`).
    pub server_name: &'a str,
    /// EHLO was used (`ESMTP` rather than `SMTP`).
    pub esmtp: bool,
    /// TLS parameters when the session is secure (`S` and the TLS clause).
    pub tls: Option<&'a TlsInfo>,
    /// The session authenticated (`A`).
    pub authenticated: bool,
    /// `received-auth` on the listener (only printed with TLS).
    pub received_auth: bool,
    /// The authenticated user name, if any.
    pub auth_user: Option<&'a str>,
    /// The queue message id.
    pub msgid: MsgId,
    /// The recipient, when the transaction has exactly one.
    pub single_rcpt: Option<&'a Mailaddr>,
    /// [`time_to_text`] of the moment the message started.
    pub date: &'a str,
}

/// The header, with LF line endings (the queue file format), ending in LF.
pub fn received_header(f: &ReceivedFields<'_>) -> String {
    let mut h = String::from("Received: ");
    if !f.mask_source {
        h.push_str(&format!(
            "from {} ({} {})",
            f.helo,
            f.client.rdns,
            f.client.address.bracketed()
        ));
    }
    h.push_str(&format!(
        "\n\tby {} (OpenSMTPD) with {}SMTP{}{} id {}",
        f.server_name,
        if f.esmtp { "E" } else { "" },
        if f.tls.is_some() { "S" } else { "" },
        if f.authenticated { "A" } else { "" },
        f.msgid
    ));
    if let Some(tls) = f.tls {
        let cert = match tls.client_cert {
            ClientCert::Verified => "YES",
            ClientCert::Unverified => "FAIL",
            ClientCert::None => "NO",
        };
        h.push_str(&format!(
            " ({}:{}:{}:{})",
            tls.version, tls.cipher, tls.bits, cert
        ));
        if f.received_auth {
            match f.auth_user.filter(|u| !u.is_empty()) {
                Some(user) => h.push_str(&format!(" auth=yes user={user}")),
                None => h.push_str(" auth=no"),
            }
        }
    }
    if let Some(rcpt) = f.single_rcpt {
        h.push_str(&format!("\n\tfor <{rcpt}>"));
    }
    h.push_str(&format!(";\n\t{}\n", f.date));
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::params::{ClientAddress, Fcrdns};

    #[test]
    fn dates_like_time_to_text() {
        // 2026-11-22 07:30:56 UTC, a Sunday (baseline §1.4).
        assert_eq!(
            time_to_text(1795332656, 0, "UTC"),
            "Sun, 22 Nov 2026 07:30:56 +0000 (UTC)"
        );
        assert_eq!(
            time_to_text(0, 0, "UTC"),
            "Thu, 1 Jan 1970 00:00:00 +0000 (UTC)"
        );
        assert_eq!(
            time_to_text(951782400, 0, "UTC"),
            "Tue, 29 Feb 2000 00:00:00 +0000 (UTC)"
        );
        assert_eq!(
            time_to_text(1795332656, 3600, "CET"),
            "Sun, 22 Nov 2026 08:30:56 +0100 (CET)"
        );
        assert_eq!(
            time_to_text(1795332656, -(4 * 3600 + 1800), "X"),
            "Sun, 22 Nov 2026 03:00:56 -0430 (X)"
        );
        assert_eq!(
            time_to_text(-1, 0, "UTC"),
            "Wed, 31 Dec 1969 23:59:59 +0000 (UTC)"
        );
        // Absurd clocks must not panic.
        let _ = time_to_text(i64::MAX, i32::MAX, "X");
        let _ = time_to_text(i64::MIN, i32::MIN, "X");
    }

    fn client() -> ClientInfo {
        ClientInfo {
            address: ClientAddress::Ip("127.0.0.1".parse().unwrap()),
            rdns: "localhost".into(),
            fcrdns: Fcrdns::Pass,
        }
    }

    fn fields<'a>(c: &'a ClientInfo, rcpt: Option<&'a Mailaddr>) -> ReceivedFields<'a> {
        ReceivedFields {
            helo: "client.example",
            client: c,
            mask_source: false,
            server_name: "vm",
            esmtp: true,
            tls: None,
            authenticated: false,
            received_auth: false,
            auth_user: None,
            msgid: MsgId(0xf952a52e),
            single_rcpt: rcpt,
            date: "Sun, 22 Nov 2026 07:30:56 +0000 (UTC)",
        }
    }

    #[test]
    fn observed_received_headers() {
        let c = client();
        assert_eq!(
            received_header(&fields(&c, None)),
            "Received: from client.example (localhost [127.0.0.1])\n\
             \tby vm (OpenSMTPD) with ESMTP id f952a52e;\n\
             \tSun, 22 Nov 2026 07:30:56 +0000 (UTC)\n"
        );
        let rcpt = Mailaddr::new("foo", "bsdsx.fr");
        let mut f = fields(&c, Some(&rcpt));
        f.esmtp = false;
        f.msgid = MsgId(0x8ecdaae1);
        assert_eq!(
            received_header(&f),
            "Received: from client.example (localhost [127.0.0.1])\n\
             \tby vm (OpenSMTPD) with SMTP id 8ecdaae1\n\
             \tfor <foo@bsdsx.fr>;\n\
             \tSun, 22 Nov 2026 07:30:56 +0000 (UTC)\n"
        );
    }

    #[test]
    fn masked_tls_and_auth_variants() {
        let c = ClientInfo::unknown(ClientAddress::Ip("::1".parse().unwrap()));
        let tls = TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS_AES_256_GCM_SHA384".into(),
            bits: 256,
            client_cert: ClientCert::None,
        };
        let mut f = fields(&c, None);
        assert!(
            received_header(&f).starts_with("Received: from client.example (<unknown> [::1])\n")
        );
        f.mask_source = true;
        f.tls = Some(&tls);
        f.authenticated = true;
        f.received_auth = true;
        f.auth_user = Some("joe");
        assert_eq!(
            received_header(&f),
            "Received: \n\tby vm (OpenSMTPD) with ESMTPSA id f952a52e \
             (TLSv1.3:TLS_AES_256_GCM_SHA384:256:NO) auth=yes user=joe;\n\
             \tSun, 22 Nov 2026 07:30:56 +0000 (UTC)\n"
        );
        f.auth_user = None;
        f.authenticated = false;
        assert!(
            received_header(&f).contains(
                "with ESMTPS id f952a52e (TLSv1.3:TLS_AES_256_GCM_SHA384:256:NO) auth=no;"
            )
        );
        // Without TLS, received-auth prints nothing.
        f.tls = None;
        assert!(received_header(&f).contains("with ESMTP id f952a52e;"));
    }

    #[test]
    fn local_submission_is_esmtpa() {
        let c = ClientInfo {
            address: ClientAddress::Local,
            rdns: "vm".into(),
            fcrdns: Fcrdns::Pass,
        };
        let mut f = fields(&c, None);
        f.helo = "vm";
        f.authenticated = true;
        assert!(
            received_header(&f)
                .starts_with("Received: from vm (vm [local])\n\tby vm (OpenSMTPD) with ESMTPA id")
        );
    }
}
