//! The scheduler core: which envelope is tried when, when it expires, and
//! what `smtpctl schedule|pause|resume|remove` do to it.
//!
//! It is pure bookkeeping: no I/O, no clock. Every call that depends on the
//! time takes `now` (Unix seconds), so tests drive it with a fake clock and
//! the daemon with the real one. The daemon's loop is:
//!
//! 1. `insert` every recovered envelope, and every envelope of each message
//!    as soon as its commit returns;
//! 2. `poll(now, n)` and act on the [`Action`]s: start deliveries, and for
//!    expiries log `Expire for ...`, bounce and remove from the spool;
//! 3. report each delivery's outcome: `delivered` (success or permanent
//!    failure) or `temp_failure`, which says when the next try is and
//!    whether a delay warning is due;
//! 4. sleep until `next_wakeup()` or until something new arrives.
//!
//! Timing follows OpenSMTPD's `scheduler_ramqueue.c` (§10.4):
//! * a new envelope with `retry` n is due at `ctime + BASE * n²` (so a fresh
//!   one is due at once);
//! * after a temporary failure the retry count n is incremented and the
//!   next try is the first `ctime + BASE * k²`, k = n, n+1, ..., that lies
//!   strictly in the future. BASE is 400 s for relayed (`mta`) envelopes and
//!   10 s for local (`mda`) and bounce envelopes: relays retry at about
//!   +400 s, +1600 s, +3600 s ... after creation, local deliveries at +10 s,
//!   +40 s, +90 s ...;
//! * a pending envelope expires at `ctime + ttl` (its own ttl, else the
//!   configured default, 4 days); expiry is checked before delivery;
//! * after each temporary failure, the first `bounce warn-interval` W (up
//!   to 4) with `next try >= ctime + W` and no warning yet for `ctime + W`
//!   asks for a "delayed" report;
//! * suspended (`pause envelope`) envelopes are neither tried nor expired
//!   until resumed; `schedule` makes envelopes due now (a suspended one
//!   stays suspended); pausing an agent (`pause mda|mta`) stops its
//!   deliveries but not its expiries; removing an envelope in flight takes
//!   effect when its delivery reports back.
//!
//! Not modelled: OpenSMTPD's hold queues (per-route overflow with a 3 s
//! base), which belong with the relay code's connection limits.

use std::collections::{BTreeMap, BTreeSet};

use super::envelope::{DEFAULT_TTL, DeliveryKind, Envelope};
use super::id::{Evpid, QueueId};

/// Retry base for relayed envelopes (`BACKOFF_TRANSFER`).
pub const BACKOFF_RELAY: u64 = 400;

/// Retry base for local deliveries and bounces (`BACKOFF_DELIVERY`).
pub const BACKOFF_LOCAL: u64 = 10;

/// Default `bounce warn-interval` (4 hours).
pub const DEFAULT_WARN_INTERVAL: u64 = 4 * 3600;

/// At most this many warn intervals are used (`MAX_BOUNCE_WARN`).
pub const MAX_WARN_INTERVALS: usize = 4;

/// The retry base of an envelope kind.
pub fn backoff_base(kind: DeliveryKind) -> u64 {
    match kind {
        DeliveryKind::Mta => BACKOFF_RELAY,
        DeliveryKind::Mda | DeliveryKind::Bounce => BACKOFF_LOCAL,
    }
}

/// `ctime + base * step²`, saturating.
fn backoff(ctime: u64, base: u64, step: u64) -> u64 {
    ctime.saturating_add(base.saturating_mul(step.saturating_mul(step)))
}

/// The first `ctime + base * k²` with `k >= step` that is strictly after
/// `now` (OpenSMTPD's `scheduler_next`).
pub fn next_retry(ctime: u64, base: u64, step: u64, now: u64) -> u64 {
    let base = base.max(1);
    // Start near the answer instead of walking up from `step`: after a long
    // downtime k can be in the thousands.
    let mut k = step;
    if now > ctime {
        k = k.max(((now - ctime) / base).isqrt());
    }
    // At most a couple of steps from here; the bound keeps it provably finite.
    for _ in 0..64 {
        let t = backoff(ctime, base, k);
        if t > now || t == u64::MAX {
            return t;
        }
        k += 1;
    }
    now.saturating_add(1)
}

/// Scheduler settings from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// `queue ttl`: lifetime of an envelope whose own ttl is 0.
    pub default_ttl: u64,
    /// `bounce warn-interval` values in seconds (first 4 used, in order).
    pub warn_intervals: Vec<u64>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            default_ttl: DEFAULT_TTL,
            warn_intervals: vec![DEFAULT_WARN_INTERVAL],
        }
    }
}

/// What the scheduler needs to know about an envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScheduleEntry {
    /// The envelope.
    pub evpid: Evpid,
    /// Its delivery agent.
    pub kind: DeliveryKind,
    /// Creation time.
    pub ctime: u64,
    /// Its own ttl; 0 for the configured default.
    pub ttl: u64,
    /// Temporary failures so far.
    pub retry: u16,
    /// The delay-warning timestamp last reported.
    pub last_bounce: u64,
}

impl ScheduleEntry {
    /// The scheduling facts of a stored envelope.
    pub fn from_envelope(envelope: &Envelope) -> ScheduleEntry {
        ScheduleEntry {
            evpid: envelope.id,
            kind: envelope.kind(),
            ctime: envelope.ctime,
            ttl: envelope.ttl,
            retry: envelope.retry,
            last_bounce: envelope.last_bounce,
        }
    }
}

/// Where an envelope is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvelopeState {
    /// Waiting; will be tried at `next_try`.
    Pending {
        /// Unix time of the next attempt.
        next_try: u64,
    },
    /// Handed out for delivery at `since`, no outcome yet.
    Inflight {
        /// Unix time it was handed out.
        since: u64,
    },
}

/// The scheduler's view of one envelope (for `smtpctl show queue`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnvelopeStatus {
    /// Delivery agent.
    pub kind: DeliveryKind,
    /// Pending or in flight.
    pub state: EnvelopeState,
    /// Suspended by `pause envelope`.
    pub suspended: bool,
    /// Temporary failures so far.
    pub retry: u16,
    /// When it expires.
    pub expire: u64,
}

/// Something the daemon must do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Try to deliver this envelope; report the outcome with
    /// [`Scheduler::delivered`] or [`Scheduler::temp_failure`].
    Deliver {
        /// The envelope.
        evpid: Evpid,
        /// Its delivery agent.
        kind: DeliveryKind,
    },
    /// The envelope's ttl has passed: log, bounce, remove from the spool.
    /// The scheduler has already forgotten it.
    Expire {
        /// The envelope.
        evpid: Evpid,
        /// Its delivery agent (`relay:` or `delivery:` in the log line).
        kind: DeliveryKind,
    },
}

/// A delay warning to generate after a temporary failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DelayWarning {
    /// The warn interval crossed (`bounce-delay` of the report).
    pub delay: u64,
    /// `ctime + delay`: store it as the envelope's `last-bounce`.
    pub timestamp: u64,
}

/// The schedule after a temporary failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// The new retry count (store it in the envelope).
    pub retry: u16,
    /// When the next attempt is.
    pub next_try: u64,
    /// A "delayed" report to generate, if one is due.
    pub delay_warning: Option<DelayWarning>,
}

/// The outcome of [`Scheduler::temp_failure`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TempFailure {
    /// Rescheduled.
    Rescheduled(Retry),
    /// It had been removed by the administrator while in flight: remove
    /// it from the spool now (log `Remove for ...`).
    Removed,
}

/// The outcome of [`Scheduler::remove`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removal {
    /// Forgotten now: remove them from the spool.
    pub removed: Vec<Evpid>,
    /// In flight: they go when their delivery reports back.
    pub deferred: Vec<Evpid>,
}

impl Removal {
    /// The count `smtpctl remove` reports.
    pub fn count(&self) -> usize {
        self.removed.len() + self.deferred.len()
    }
}

#[derive(Clone, Copy, Debug)]
enum SlotState {
    Pending,
    Inflight(u64),
}

#[derive(Clone, Debug)]
struct Slot {
    kind: DeliveryKind,
    ctime: u64,
    expire: u64,
    retry: u16,
    last_bounce: u64,
    sched: u64,
    state: SlotState,
    suspended: bool,
    removed: bool,
}

impl Slot {
    /// Indexed slots are pending and not suspended.
    fn indexed(&self) -> bool {
        matches!(self.state, SlotState::Pending) && !self.suspended
    }
}

/// The scheduler (see the module documentation).
#[derive(Debug, Default)]
pub struct Scheduler {
    config: SchedulerConfig,
    slots: BTreeMap<Evpid, Slot>,
    /// (next try, id) of indexed slots, one set per agent (mda, mta, bounce), so that a
    /// paused agent's backlog costs nothing to skip.
    due: [BTreeSet<(u64, Evpid)>; 3],
    /// (expiry, id) of indexed slots.
    expiries: BTreeSet<(u64, Evpid)>,
    paused: BTreeSet<KindKey>,
}

/// `DeliveryKind` as an ordered key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct KindKey(u8);

impl From<DeliveryKind> for KindKey {
    fn from(kind: DeliveryKind) -> Self {
        KindKey(match kind {
            DeliveryKind::Mda => 0,
            DeliveryKind::Mta => 1,
            DeliveryKind::Bounce => 2,
        })
    }
}

impl Scheduler {
    /// An empty scheduler.
    pub fn new(config: SchedulerConfig) -> Scheduler {
        Scheduler {
            config,
            ..Scheduler::default()
        }
    }

    /// Number of envelopes known (pending or in flight).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Number of messages with an envelope known (ids are ordered by message first).
    pub fn messages(&self) -> usize {
        let mut last = None;
        self.slots
            .keys()
            .filter(|id| last.replace(id.msgid()) != Some(id.msgid()))
            .count()
    }

    /// True when no envelope is known.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Adds an envelope. Returns false (and changes nothing) if it is
    /// already known.
    pub fn insert(&mut self, entry: ScheduleEntry) -> bool {
        if self.slots.contains_key(&entry.evpid) {
            return false;
        }
        let ttl = if entry.ttl > 0 {
            entry.ttl
        } else {
            self.config.default_ttl
        };
        let slot = Slot {
            kind: entry.kind,
            ctime: entry.ctime,
            expire: entry.ctime.saturating_add(ttl),
            retry: entry.retry,
            last_bounce: entry.last_bounce,
            sched: backoff(entry.ctime, backoff_base(entry.kind), entry.retry.into()),
            state: SlotState::Pending,
            suspended: false,
            removed: false,
        };
        self.index(entry.evpid, &slot);
        self.slots.insert(entry.evpid, slot);
        true
    }

    fn index(&mut self, evpid: Evpid, slot: &Slot) {
        if slot.indexed() {
            self.due[KindKey::from(slot.kind).0 as usize].insert((slot.sched, evpid));
            self.expiries.insert((slot.expire, evpid));
        }
    }

    fn unindex(&mut self, evpid: Evpid, slot: &Slot) {
        self.due[KindKey::from(slot.kind).0 as usize].remove(&(slot.sched, evpid));
        self.expiries.remove(&(slot.expire, evpid));
    }

    /// Hands out at most `max` actions due at `now`: expiries first, then
    /// deliveries in order of their scheduled time. Envelopes handed out
    /// for delivery are in flight until their outcome is reported.
    pub fn poll(&mut self, now: u64, max: usize) -> Vec<Action> {
        let mut actions = Vec::new();
        while actions.len() < max {
            let Some(&(expire, evpid)) = self.expiries.first() else {
                break;
            };
            if expire > now {
                break;
            }
            if let Some(slot) = self.slots.remove(&evpid) {
                self.unindex(evpid, &slot);
                actions.push(Action::Expire {
                    evpid,
                    kind: slot.kind,
                });
            } else {
                self.expiries.remove(&(expire, evpid));
            }
        }
        // Earliest first across the agents that are not paused.
        let mut ready: Vec<(u64, Evpid)> = Vec::new();
        for (k, set) in self.due.iter().enumerate() {
            if self.paused.contains(&KindKey(k as u8)) {
                continue;
            }
            for &(sched, evpid) in set {
                if sched > now || ready.len() >= max {
                    break;
                }
                ready.push((sched, evpid));
            }
        }
        ready.sort_unstable();
        ready.truncate(max.saturating_sub(actions.len()));
        let ready: Vec<Evpid> = ready.into_iter().map(|(_, e)| e).collect();
        for evpid in ready {
            if let Some(mut slot) = self.slots.remove(&evpid) {
                self.unindex(evpid, &slot);
                slot.state = SlotState::Inflight(now);
                actions.push(Action::Deliver {
                    evpid,
                    kind: slot.kind,
                });
                self.slots.insert(evpid, slot);
            }
        }
        actions
    }

    /// When something will next be due (Unix time), ignoring paused
    /// agents' deliveries; `None` when nothing is pending. May be in the
    /// past: then `poll` has work now.
    pub fn next_wakeup(&self) -> Option<u64> {
        let expiry = self.expiries.first().map(|&(t, _)| t);
        let delivery = self
            .due
            .iter()
            .enumerate()
            .filter(|(k, _)| !self.paused.contains(&KindKey(*k as u8)))
            .filter_map(|(_, set)| set.first().map(|&(t, _)| t))
            .min();
        match (expiry, delivery) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The delivery succeeded, or failed for good: forget the envelope.
    /// Returns false if it was not known.
    pub fn delivered(&mut self, evpid: Evpid) -> bool {
        match self.slots.remove(&evpid) {
            Some(slot) => {
                self.unindex(evpid, &slot);
                true
            }
            None => false,
        }
    }

    /// The delivery failed temporarily at `now`: count the retry and
    /// schedule the next attempt. `None` if the envelope is not known.
    pub fn temp_failure(&mut self, evpid: Evpid, now: u64) -> Option<TempFailure> {
        let mut slot = self.slots.remove(&evpid)?;
        self.unindex(evpid, &slot);
        if slot.removed {
            return Some(TempFailure::Removed);
        }
        slot.retry = slot.retry.saturating_add(1);
        slot.sched = next_retry(slot.ctime, backoff_base(slot.kind), slot.retry.into(), now);
        slot.state = SlotState::Pending;
        let mut delay_warning = None;
        for &delay in self.config.warn_intervals.iter().take(MAX_WARN_INTERVALS) {
            if delay == 0 {
                break;
            }
            let timestamp = slot.ctime.saturating_add(delay);
            if slot.sched >= timestamp && slot.last_bounce < timestamp {
                slot.last_bounce = timestamp;
                delay_warning = Some(DelayWarning { delay, timestamp });
                break;
            }
        }
        let retry = Retry {
            retry: slot.retry,
            next_try: slot.sched,
            delay_warning,
        };
        self.index(evpid, &slot);
        self.slots.insert(evpid, slot);
        Some(TempFailure::Rescheduled(retry))
    }

    /// The known envelopes `id` selects, in id order.
    fn selected(&self, id: QueueId) -> Vec<Evpid> {
        match id {
            QueueId::Envelope(e) => self
                .slots
                .contains_key(&e)
                .then_some(e)
                .into_iter()
                .collect(),
            QueueId::Message(m) => {
                match (Evpid::from_parts(m, 1), Evpid::from_parts(m, u32::MAX)) {
                    (Some(lo), Some(hi)) => self.slots.range(lo..=hi).map(|(e, _)| *e).collect(),
                    _ => Vec::new(),
                }
            }
        }
    }

    /// Applies `change` to every selected slot, re-indexing it; counts the
    /// slots for which `change` returned true.
    fn change(&mut self, id: QueueId, mut change: impl FnMut(&mut Slot) -> bool) -> usize {
        let mut n = 0;
        for evpid in self.selected(id) {
            if let Some(mut slot) = self.slots.remove(&evpid) {
                self.unindex(evpid, &slot);
                if change(&mut slot) {
                    n += 1;
                }
                self.index(evpid, &slot);
                self.slots.insert(evpid, slot);
            }
        }
        n
    }

    /// `smtpctl schedule`: makes the selected envelopes that are not in
    /// flight due at `now`. Returns how many (for `N envelope(s) scheduled`).
    pub fn schedule(&mut self, id: QueueId, now: u64) -> usize {
        self.change(id, |slot| match slot.state {
            SlotState::Pending => {
                slot.sched = now;
                true
            }
            SlotState::Inflight(_) => false,
        })
    }

    /// `smtpctl pause envelope`: suspends the selected envelopes. Returns
    /// how many were not suspended before.
    pub fn suspend(&mut self, id: QueueId) -> usize {
        self.change(id, |slot| !std::mem::replace(&mut slot.suspended, true))
    }

    /// `smtpctl resume envelope`: lifts the suspension. Returns how many
    /// were suspended.
    pub fn resume(&mut self, id: QueueId) -> usize {
        self.change(id, |slot| std::mem::replace(&mut slot.suspended, false))
    }

    /// `smtpctl remove`: forgets the selected envelopes; those in flight
    /// are marked and go when their delivery reports back.
    pub fn remove(&mut self, id: QueueId) -> Removal {
        let mut removal = Removal::default();
        for evpid in self.selected(id) {
            let Some(slot) = self.slots.get_mut(&evpid) else {
                continue;
            };
            match slot.state {
                SlotState::Inflight(_) => {
                    if !slot.removed {
                        slot.removed = true;
                        removal.deferred.push(evpid);
                    }
                }
                SlotState::Pending => {
                    if let Some(slot) = self.slots.remove(&evpid) {
                        self.unindex(evpid, &slot);
                        removal.removed.push(evpid);
                    }
                }
            }
        }
        removal
    }

    /// `smtpctl pause mda|mta`: stops handing out that agent's deliveries.
    pub fn pause_agent(&mut self, kind: DeliveryKind) {
        self.paused.insert(kind.into());
    }

    /// `smtpctl resume mda|mta`.
    pub fn resume_agent(&mut self, kind: DeliveryKind) {
        self.paused.remove(&kind.into());
    }

    /// True if the agent is paused (`show status`).
    pub fn is_agent_paused(&self, kind: DeliveryKind) -> bool {
        self.paused.contains(&kind.into())
    }

    /// The scheduler's view of one envelope.
    pub fn status(&self, evpid: Evpid) -> Option<EnvelopeStatus> {
        self.slots.get(&evpid).map(|slot| EnvelopeStatus {
            kind: slot.kind,
            state: match slot.state {
                SlotState::Pending => EnvelopeState::Pending {
                    next_try: slot.sched,
                },
                SlotState::Inflight(since) => EnvelopeState::Inflight { since },
            },
            suspended: slot.suspended,
            retry: slot.retry,
            expire: slot.expire,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::id::Msgid;

    /// A settable clock, as the daemon's loop would read the real one.
    struct FakeClock(u64);

    impl FakeClock {
        fn now(&self) -> u64 {
            self.0
        }
        fn advance(&mut self, secs: u64) {
            self.0 += secs;
        }
        fn set(&mut self, t: u64) {
            self.0 = t;
        }
    }

    const T0: u64 = 1_795_333_122;

    fn msg(n: u32) -> Msgid {
        Msgid::new(n).unwrap()
    }

    fn evp(m: u32, e: u32) -> Evpid {
        Evpid::from_parts(msg(m), e).unwrap()
    }

    fn entry(evpid: Evpid, kind: DeliveryKind, ctime: u64) -> ScheduleEntry {
        ScheduleEntry {
            evpid,
            kind,
            ctime,
            ttl: 0,
            retry: 0,
            last_bounce: 0,
        }
    }

    fn delivers(actions: &[Action]) -> Vec<Evpid> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Deliver { evpid, .. } => Some(*evpid),
                _ => None,
            })
            .collect()
    }

    fn rescheduled(outcome: Option<TempFailure>) -> Retry {
        match outcome {
            Some(TempFailure::Rescheduled(r)) => r,
            other => panic!("expected a reschedule, got {other:?}"),
        }
    }

    #[test]
    fn messages_are_counted_once_whatever_their_envelopes() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        assert_eq!((s.len(), s.messages()), (0, 0));
        for (m, e) in [(7, 1), (7, 2), (9, 1), (7, 3), (12, 5)] {
            s.insert(entry(evp(m, e), DeliveryKind::Mda, T0));
        }
        assert_eq!((s.len(), s.messages()), (5, 3));
        s.delivered(evp(9, 1));
        assert_eq!((s.len(), s.messages()), (4, 2));
    }

    #[test]
    fn next_retry_matches_the_formula() {
        // First k >= step with ctime + base*k^2 > now.
        assert_eq!(next_retry(1000, 400, 1, 1000), 1400);
        assert_eq!(next_retry(1000, 400, 2, 1400), 2600);
        assert_eq!(next_retry(1000, 400, 3, 2600), 4600);
        assert_eq!(next_retry(1000, 400, 1, 1400), 2600); // 1400 is not after 1400
        assert_eq!(next_retry(1000, 400, 2, 6000), 7400); // skips k = 2, 3
        assert_eq!(next_retry(1000, 10, 1, 1000), 1010);
        // A very old envelope after a long downtime: no long walk, right answer.
        let t = next_retry(0, 10, 1, T0);
        let k = ((t / 10) as f64).sqrt() as u64;
        assert_eq!(k * k * 10, t);
        assert!(t > T0 && (k - 1) * (k - 1) * 10 <= T0);
        assert_eq!(next_retry(u64::MAX - 5, 400, 1, u64::MAX - 1), u64::MAX);
    }

    #[test]
    fn fresh_envelopes_are_due_immediately() {
        let clock = FakeClock(T0);
        let mut s = Scheduler::new(SchedulerConfig::default());
        assert!(s.insert(entry(evp(1, 1), DeliveryKind::Mta, T0)));
        assert!(!s.insert(entry(evp(1, 1), DeliveryKind::Mta, T0)));
        assert_eq!(s.next_wakeup(), Some(T0));
        let actions = s.poll(clock.now(), 10);
        assert_eq!(
            actions,
            vec![Action::Deliver {
                evpid: evp(1, 1),
                kind: DeliveryKind::Mta
            }]
        );
        assert_eq!(
            s.status(evp(1, 1)).unwrap().state,
            EnvelopeState::Inflight { since: T0 }
        );
        // In flight: not handed out twice.
        assert!(s.poll(clock.now() + 10_000, 10).is_empty());
        assert!(s.delivered(evp(1, 1)));
        assert!(s.is_empty());
        assert_eq!(s.next_wakeup(), None);
    }

    #[test]
    fn relay_backoff_400_1600_3600_after_creation() {
        let mut clock = FakeClock(T0);
        let mut s = Scheduler::new(SchedulerConfig {
            default_ttl: DEFAULT_TTL,
            warn_intervals: vec![],
        });
        let e = evp(7, 7);
        s.insert(entry(e, DeliveryKind::Mta, T0));
        let mut tries = Vec::new();
        for _ in 0..4 {
            assert_eq!(delivers(&s.poll(clock.now(), 10)), vec![e]);
            let r = rescheduled(s.temp_failure(e, clock.now()));
            tries.push((r.retry, r.next_try - T0));
            // Nothing until the next try.
            clock.set(r.next_try - 1);
            assert!(s.poll(clock.now(), 10).is_empty());
            assert_eq!(s.next_wakeup(), Some(r.next_try));
            clock.advance(1);
        }
        assert_eq!(tries, vec![(1, 400), (2, 1600), (3, 3600), (4, 6400)]);
    }

    #[test]
    fn local_and_bounce_backoff_10_40_90() {
        let mut clock = FakeClock(T0);
        let mut s = Scheduler::new(SchedulerConfig::default());
        for (n, kind) in [(1, DeliveryKind::Mda), (2, DeliveryKind::Bounce)] {
            let e = evp(n, 1);
            clock.set(T0);
            s.insert(entry(e, kind, T0));
            let mut offsets = Vec::new();
            for _ in 0..3 {
                assert_eq!(delivers(&s.poll(clock.now(), 10)), vec![e]);
                let r = rescheduled(s.temp_failure(e, clock.now()));
                offsets.push(r.next_try - T0);
                clock.set(r.next_try);
            }
            assert_eq!(offsets, vec![10, 40, 90], "{kind:?}");
            s.delivered(e);
        }
    }

    #[test]
    fn a_late_failure_skips_past_slots() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        let e = evp(3, 3);
        s.insert(entry(e, DeliveryKind::Mta, T0));
        s.poll(T0, 1);
        // The attempt took 5000 s (or the daemon was down): retry 1 would be
        // +400, but that and +1600, +3600 are gone; +6400 is next.
        let r = rescheduled(s.temp_failure(e, T0 + 5000));
        assert_eq!((r.retry, r.next_try), (1, T0 + 6400));
    }

    #[test]
    fn recovered_envelopes_resume_their_backoff() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        let mut ent = entry(evp(4, 4), DeliveryKind::Mta, T0);
        ent.retry = 2;
        s.insert(ent);
        assert_eq!(
            s.status(evp(4, 4)).unwrap().state,
            EnvelopeState::Pending {
                next_try: T0 + 1600
            }
        );
        assert!(s.poll(T0 + 1599, 10).is_empty());
        assert_eq!(delivers(&s.poll(T0 + 1600, 10)), vec![evp(4, 4)]);
    }

    #[test]
    fn expiry_after_ttl_default_four_days() {
        let mut clock = FakeClock(T0);
        let mut s = Scheduler::new(SchedulerConfig::default());
        let e = evp(5, 5);
        let short = evp(5, 6);
        s.insert(entry(e, DeliveryKind::Mta, T0));
        let mut with_ttl = entry(short, DeliveryKind::Mda, T0);
        with_ttl.ttl = 20;
        s.insert(with_ttl);
        assert_eq!(s.status(e).unwrap().expire, T0 + 345_600);
        // Keep both failing until they expire.
        let mut expired = Vec::new();
        let mut rounds = 0;
        while expired.len() < 2 {
            rounds += 1;
            assert!(rounds < 1000, "never expired");
            for action in s.poll(clock.now(), 10) {
                match action {
                    Action::Deliver { evpid, .. } => {
                        s.temp_failure(evpid, clock.now());
                    }
                    Action::Expire { evpid, kind } => expired.push((evpid, kind, clock.now())),
                }
            }
            match s.next_wakeup() {
                Some(t) => clock.set(t.max(clock.now())),
                None => break,
            }
        }
        assert_eq!(
            expired,
            vec![
                (short, DeliveryKind::Mda, T0 + 20),
                (e, DeliveryKind::Mta, T0 + 345_600),
            ]
        );
        assert!(s.is_empty());
    }

    #[test]
    fn expiry_wins_over_a_due_delivery() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        let mut ent = entry(evp(6, 6), DeliveryKind::Mda, T0);
        ent.ttl = 5;
        s.insert(ent);
        assert_eq!(
            s.poll(T0 + 5, 10),
            vec![Action::Expire {
                evpid: evp(6, 6),
                kind: DeliveryKind::Mda
            }]
        );
    }

    #[test]
    fn delay_warnings_once_per_interval() {
        let mut clock = FakeClock(T0);
        let mut s = Scheduler::new(SchedulerConfig {
            default_ttl: DEFAULT_TTL,
            warn_intervals: vec![3600, 7200],
        });
        let e = evp(8, 8);
        s.insert(entry(e, DeliveryKind::Mta, T0));
        let mut warnings = Vec::new();
        for _ in 0..6 {
            assert_eq!(delivers(&s.poll(clock.now(), 10)), vec![e]);
            let r = rescheduled(s.temp_failure(e, clock.now()));
            if let Some(w) = r.delay_warning {
                warnings.push((r.retry, w.delay, w.timestamp - T0));
            }
            clock.set(r.next_try);
        }
        // Next tries: +400, +1600, +3600 (>= 1 h: warn), +6400, +10000 (>= 2 h: warn), ...
        assert_eq!(warnings, vec![(3, 3600, 3600), (5, 7200, 7200)]);
    }

    #[test]
    fn recovered_last_bounce_prevents_a_second_warning() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        let mut ent = entry(evp(9, 9), DeliveryKind::Mta, T0);
        ent.retry = 9;
        ent.last_bounce = T0 + DEFAULT_WARN_INTERVAL;
        s.insert(ent);
        s.poll(T0 + 40_000, 10);
        let r = rescheduled(s.temp_failure(evp(9, 9), T0 + 40_000));
        assert_eq!(r.delay_warning, None);
    }

    #[test]
    fn suspend_resume_and_schedule_now() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        let (a, b, c) = (evp(10, 1), evp(10, 2), evp(11, 1));
        for e in [a, b, c] {
            s.insert(entry(e, DeliveryKind::Mta, T0));
        }
        assert_eq!(s.suspend(QueueId::Message(msg(10))), 2);
        assert_eq!(s.suspend(QueueId::Envelope(a)), 0);
        assert_eq!(delivers(&s.poll(T0, 10)), vec![c]);
        assert!(s.status(a).unwrap().suspended);
        // Suspended envelopes do not expire either.
        assert!(s.poll(T0 + 10 * DEFAULT_TTL, 10).is_empty());
        assert_eq!(s.resume(QueueId::Envelope(a)), 1);
        assert_eq!(s.resume(QueueId::Envelope(a)), 0);
        // Resumed long after its ttl: expires at once.
        assert_eq!(
            s.poll(T0 + 10 * DEFAULT_TTL, 10),
            vec![Action::Expire {
                evpid: a,
                kind: DeliveryKind::Mta
            }]
        );

        // schedule: a waiting envelope becomes due now.
        s.resume(QueueId::Envelope(b));
        s.poll(T0, 10);
        rescheduled(s.temp_failure(b, T0));
        assert!(s.poll(T0 + 1, 10).is_empty());
        assert_eq!(s.schedule(QueueId::Envelope(b), T0 + 1), 1);
        // c is in flight: not counted.
        assert_eq!(s.schedule(QueueId::Message(msg(11)), T0 + 1), 0);
        assert_eq!(delivers(&s.poll(T0 + 1, 10)), vec![b]);
        assert_eq!(s.schedule(QueueId::Envelope(evp(99, 1)), T0), 0);
    }

    #[test]
    fn remove_pending_now_and_inflight_later() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        let (a, b) = (evp(12, 1), evp(12, 2));
        s.insert(entry(a, DeliveryKind::Mta, T0));
        s.insert(entry(b, DeliveryKind::Mta, T0 + 100));
        assert_eq!(delivers(&s.poll(T0, 10)), vec![a]);
        let removal = s.remove(QueueId::Message(msg(12)));
        assert_eq!(removal.removed, vec![b]);
        assert_eq!(removal.deferred, vec![a]);
        assert_eq!(removal.count(), 2);
        // Removing again does not count the in-flight one twice.
        assert_eq!(s.remove(QueueId::Envelope(a)).count(), 0);
        assert_eq!(s.temp_failure(a, T0 + 1), Some(TempFailure::Removed));
        assert!(s.is_empty());
        assert_eq!(s.temp_failure(a, T0 + 1), None);
        assert!(!s.delivered(a));
    }

    #[test]
    fn paused_agents_keep_expiring() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        let (relay, local) = (evp(13, 1), evp(13, 2));
        s.insert(entry(relay, DeliveryKind::Mta, T0));
        let mut l = entry(local, DeliveryKind::Mda, T0);
        l.ttl = 50;
        s.insert(l);
        s.pause_agent(DeliveryKind::Mta);
        s.pause_agent(DeliveryKind::Mda);
        assert!(s.is_agent_paused(DeliveryKind::Mta));
        assert!(s.poll(T0, 10).is_empty());
        // Only the expiry can wake us.
        assert_eq!(s.next_wakeup(), Some(T0 + 50));
        assert_eq!(
            s.poll(T0 + 50, 10),
            vec![Action::Expire {
                evpid: local,
                kind: DeliveryKind::Mda
            }]
        );
        s.resume_agent(DeliveryKind::Mta);
        assert_eq!(s.next_wakeup(), Some(T0));
        assert_eq!(delivers(&s.poll(T0 + 50, 10)), vec![relay]);
    }

    #[test]
    fn poll_respects_max_and_time_order() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        for i in 1..=5u32 {
            s.insert(entry(
                evp(20 + i, 1),
                DeliveryKind::Mda,
                T0 + 10 - u64::from(i),
            ));
        }
        let first = delivers(&s.poll(T0 + 10, 2));
        assert_eq!(first, vec![evp(25, 1), evp(24, 1)]);
        assert_eq!(s.poll(T0 + 10, 10).len(), 3);
        assert!(s.poll(T0 + 10, 0).is_empty());
    }
}
