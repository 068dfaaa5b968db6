//! The durable queue: spool layout, envelopes, fsync before acceptance, recovery.
