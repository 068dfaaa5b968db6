//! What one DNS question came back with.
//!
//! Mail handling needs to tell apart outcomes that a plain `Result` would
//! blur: a name that does not exist (NXDOMAIN) bounces mail and makes an
//! rDNS check fail, a name with no records of the asked type (NODATA) is what
//! triggers the implicit-MX rule, and a temporary failure (SERVFAIL, timeout,
//! unreachable server) must never turn into a permanent decision.

use std::fmt;

/// The outcome of one lookup: records, or why there are none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<T> {
    /// The name has records of the asked type. Never empty.
    Records(Vec<T>),
    /// NXDOMAIN: the name does not exist at all.
    NxDomain,
    /// NOERROR with no records of the asked type (NODATA): the name exists,
    /// but not with this type.
    NoData,
    /// No usable answer now; asking again later may succeed.
    TempFail(TempFailure),
    /// The name cannot be put in a DNS question (empty label, label longer
    /// than 63 bytes, name longer than 255). Nothing was sent. OpenSMTPD
    /// reports this as `Invalid domain name`.
    BadName,
}

impl<T> Answer<T> {
    /// `Records` when `records` is non-empty, `NoData` otherwise.
    pub fn from_records(records: Vec<T>) -> Self {
        if records.is_empty() {
            Answer::NoData
        } else {
            Answer::Records(records)
        }
    }

    /// The records, if any.
    pub fn records(&self) -> &[T] {
        match self {
            Answer::Records(records) => records,
            _ => &[],
        }
    }

    /// Whether this is a temporary failure.
    pub fn is_temporary(&self) -> bool {
        matches!(self, Answer::TempFail(_))
    }

    /// Applies `f` to the records, keeping every other outcome; an empty
    /// result becomes `NoData`.
    pub fn map_records<U>(self, f: impl FnOnce(Vec<T>) -> Vec<U>) -> Answer<U> {
        match self {
            Answer::Records(records) => Answer::from_records(f(records)),
            Answer::NxDomain => Answer::NxDomain,
            Answer::NoData => Answer::NoData,
            Answer::TempFail(failure) => Answer::TempFail(failure),
            Answer::BadName => Answer::BadName,
        }
    }

    /// Merges the answers for two record types of the same name (A and AAAA).
    ///
    /// Records from either side win (a partial answer is still an answer:
    /// getaddrinfo behaves the same way). Without records, NXDOMAIN is a
    /// statement about the name and beats a temporary failure of the other
    /// question; a temporary failure beats NODATA, because the missing side
    /// might have had records.
    pub fn merge(self, other: Answer<T>) -> Answer<T> {
        use Answer::*;
        match (self, other) {
            (Records(mut first), Records(second)) => {
                first.extend(second);
                Records(first)
            }
            (Records(records), _) | (_, Records(records)) => Records(records),
            (NxDomain, _) | (_, NxDomain) => NxDomain,
            (TempFail(failure), _) | (_, TempFail(failure)) => TempFail(failure),
            (BadName, _) | (_, BadName) => BadName,
            (NoData, NoData) => NoData,
        }
    }
}

/// Why a lookup failed temporarily.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TempFailure {
    /// The server answered SERVFAIL.
    ServFail,
    /// No answer within the resolver's timeouts or the caller's deadline.
    Timeout,
    /// The server could not be reached (connection refused, no route, ...).
    Network(String),
    /// The server answered with another error code (REFUSED, FORMERR,
    /// NOTIMP, ...). Usually a local resolver misconfiguration, so smtpd
    /// retries rather than bounce mail over it.
    Rcode(String),
    /// Anything else the resolver library reported (malformed reply, ...).
    Other(String),
}

impl fmt::Display for TempFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TempFailure::ServFail => f.write_str("server failure (SERVFAIL)"),
            TempFailure::Timeout => f.write_str("timed out"),
            TempFailure::Network(reason) => write!(f, "network error: {reason}"),
            TempFailure::Rcode(code) => write!(f, "server answered {code}"),
            TempFailure::Other(reason) => f.write_str(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_records_never_holds_an_empty_list() {
        assert_eq!(Answer::<u8>::from_records(vec![]), Answer::NoData);
        assert_eq!(Answer::from_records(vec![1]), Answer::Records(vec![1]));
        assert_eq!(
            Answer::Records(vec![1, 2])
                .map_records(|r| r.into_iter().filter(|x| *x > 5).collect::<Vec<_>>()),
            Answer::NoData
        );
    }

    #[test]
    fn merge_prefers_records_then_nxdomain_then_tempfail() {
        let tf = || Answer::<u8>::TempFail(TempFailure::Timeout);
        assert_eq!(
            Answer::Records(vec![1]).merge(Answer::Records(vec![2])),
            Answer::Records(vec![1, 2])
        );
        assert_eq!(
            tf().merge(Answer::Records(vec![2])),
            Answer::Records(vec![2])
        );
        assert_eq!(
            Answer::Records(vec![1]).merge(Answer::NxDomain),
            Answer::Records(vec![1])
        );
        assert_eq!(tf().merge(Answer::NxDomain), Answer::NxDomain);
        assert_eq!(Answer::<u8>::NoData.merge(tf()), tf());
        assert_eq!(Answer::<u8>::NoData.merge(Answer::NoData), Answer::NoData);
        assert_eq!(
            Answer::<u8>::BadName.merge(Answer::BadName),
            Answer::BadName
        );
    }
}
