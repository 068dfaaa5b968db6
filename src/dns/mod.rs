//! DNS lookups behind a `Resolver` trait: PTR, A/AAAA, MX, and forward-confirmed rDNS.
