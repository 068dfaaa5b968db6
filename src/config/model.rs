//! The checked configuration: what an smtpd.conf means, statement by statement.
//!
//! Every object keeps the [`Span`] of the statement that made it, for messages; spans never
//! take part in equality, so two configurations are equal exactly when they mean the same thing
//! (that is what the `smtpd -n -v` round trip compares).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Where a statement came from.
#[derive(Clone, Debug, Default)]
pub struct Span {
    pub file: Arc<str>,
    pub line: u32,
}

impl PartialEq for Span {
    fn eq(&self, _: &Span) -> bool {
        true
    }
}
impl Eq for Span {}

/// A table is a list of keys or a key → value mapping; backends other than inline and file
/// tables answer any kind of lookup, like OpenSMTPD's dynamic tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableKind {
    List,
    Mapping,
    Dynamic,
    /// A file table that failed to load: no lookup may use it.
    Unusable,
}

/// Where a table's entries come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableBackend {
    /// `{ ... }` written in the configuration.
    Inline,
    /// A plain-text file (`file:/path` or `/path`); `spelled` keeps how it was written.
    File { path: String, spelled: String },
    /// A Berkeley DB hash file built by makemap (`db:/path`).
    Db { path: String },
    /// An external table program (`sqlite:/path`, `ldap:/path`, ...).
    External { backend: String, config: String },
    /// One of the tables smtpd creates itself (`<localhost>`, `<getpwnam>`, ...).
    Builtin,
}

/// A named or anonymous table with its entries loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub name: String,
    pub backend: TableBackend,
    pub kind: TableKind,
    /// Keys (lower-cased, as OpenSMTPD stores them) in byte order; lists have empty values.
    pub entries: Arc<BTreeMap<String, String>>,
    /// Anonymous tables (`<dynamic:N>`) are printed back inline where they were used.
    pub anonymous: bool,
    pub span: Span,
}

/// Index of a table in [`Config::tables`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TableId(pub usize);

/// A table used for matching, possibly as regular expressions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableMatch {
    pub regex: bool,
    pub table: TableId,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pki {
    pub name: String,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub dhe: Option<String>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ca {
    pub name: String,
    pub cert: String,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proc {
    pub name: String,
    pub command: String,
    pub user: Option<String>,
    pub group: Option<String>,
    pub chroot: Option<String>,
    pub span: Span,
}

/// The address family a listener is restricted to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Inet4,
    Inet6,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// STARTTLS offered.
    Tls,
    /// STARTTLS required before MAIL.
    TlsRequire { verify: bool },
    /// TLS from the first byte.
    Smtps { verify: bool },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    Required(Option<TableId>),
    Optional(Option<TableId>),
}

/// How a port was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub number: u16,
    pub spelled: String,
}

/// Where a listener listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenOn {
    /// The local enqueue socket.
    Socket,
    /// An interface name, `all`, an address or a host name, as written.
    Interface(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub on: ListenOn,
    pub family: Option<Family>,
    pub port: Option<Port>,
    pub filter: Option<String>,
    pub tls: Option<TlsMode>,
    pub pki: Option<String>,
    pub ca: Option<String>,
    pub auth: Option<AuthMode>,
    pub tag: Option<String>,
    pub hostname: Option<String>,
    pub hostnames: Option<TableId>,
    pub mask_src: bool,
    pub received_auth: bool,
    pub no_dsn: bool,
    pub proxy_v2: bool,
    pub senders: Option<(TableId, bool)>,
    /// `auth-plaintext`: AUTH offered without TLS (smtpd's option; refused by OpenSMTPD).
    pub auth_plaintext: bool,
    /// The addresses the interface name resolved to when the configuration was checked.
    pub addresses: Vec<std::net::IpAddr>,
    /// The socket listener smtpd adds when the file has none.
    pub implicit: bool,
    pub span: Span,
}

impl Listener {
    pub fn new(on: ListenOn, span: Span) -> Listener {
        Listener {
            on,
            family: None,
            port: None,
            filter: None,
            tls: None,
            pki: None,
            ca: None,
            auth: None,
            tag: None,
            hostname: None,
            hostnames: None,
            mask_src: false,
            received_auth: false,
            no_dsn: false,
            proxy_v2: false,
            senders: None,
            auth_plaintext: false,
            addresses: Vec::new(),
            implicit: false,
            span,
        }
    }

    /// The TCP port: as configured, else 465 for `smtps` and 25 otherwise.
    pub fn port_number(&self) -> u16 {
        match (&self.port, self.tls) {
            (Some(p), _) => p.number,
            (None, Some(TlsMode::Smtps { .. })) => 465,
            _ => 25,
        }
    }
}

/// The SMTP phases a builtin filter can run at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    Connect,
    Helo,
    Ehlo,
    Auth,
    MailFrom,
    RcptTo,
    Data,
    Commit,
}

impl Phase {
    pub fn keyword(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Helo => "helo",
            Phase::Ehlo => "ehlo",
            Phase::Auth => "auth",
            Phase::MailFrom => "mail-from",
            Phase::RcptTo => "rcpt-to",
            Phase::Data => "data",
            Phase::Commit => "commit",
        }
    }
}

/// What a builtin filter tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    Fcrdns,
    Rdns(Option<TableMatch>),
    Src(TableMatch),
    Helo(TableMatch),
    Auth(Option<TableMatch>),
    MailFrom(TableMatch),
    RcptTo(TableMatch),
}

/// What a builtin filter does when its condition holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Junk,
    Bypass,
    Reject(String),
    Disconnect(String),
    Rewrite(String),
    Report(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltinFilter {
    pub phase: Phase,
    pub negate: bool,
    pub condition: Condition,
    pub decision: Decision,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilterKind {
    /// Runs the named `proc`.
    Proc(String),
    /// Runs a command as its own processor (named after the filter).
    ProcExec {
        command: String,
        user: Option<String>,
        group: Option<String>,
        chroot: Option<String>,
    },
    Builtin(BuiltinFilter),
    Chain(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub name: String,
    pub kind: FilterKind,
    /// Chains made by an inline `filter { a, b }` list (`<dynchain:N>`).
    pub anonymous: bool,
    pub span: Span,
}

/// How a local action hands mail over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalMethod {
    Mbox,
    Maildir { path: Option<String>, junk: bool },
    Lmtp { destination: String, rcpt_to: bool },
    Mda(String),
    ForwardOnly,
    ExpandOnly,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalAction {
    pub method: LocalMethod,
    pub alias: Option<TableId>,
    pub virtual_: Option<TableId>,
    /// `None` means the system password database.
    pub userbase: Option<TableId>,
    pub user: Option<String>,
    pub wrapper: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayAction {
    pub helo: Option<String>,
    pub helo_src: Option<TableId>,
    pub pki: Option<String>,
    pub ca: Option<String>,
    pub src: Option<TableId>,
    pub mail_from: Option<String>,
    /// `backup`, with the optional `mx` name.
    pub backup: Option<Option<String>>,
    pub host: Option<TableId>,
    pub domain: Option<TableId>,
    /// `tls`, and whether `no-verify` was given.
    pub tls: Option<bool>,
    pub auth: Option<TableId>,
    pub filter: Option<String>,
    pub srs: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActionMethod {
    Local(LocalAction),
    Relay(RelayAction),
}

/// A dispatcher: what happens to a recipient a rule sends to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Action {
    pub name: String,
    pub method: ActionMethod,
    /// Expiry for envelopes using this action, in seconds.
    pub ttl: Option<Delay>,
    pub span: Span,
}

/// A delay as written (`4d`) and in seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delay {
    pub spelled: String,
    pub seconds: u64,
}

/// Where a rule's mail comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FromCriterion {
    Socket,
    Local,
    Any,
    Src(TableMatch),
    Rdns(Option<TableMatch>),
    /// `from auth [table]`: any origin, authenticated (as the table says).
    Auth(Option<TableMatch>),
    /// `from mail-from <table>`: any origin, with that sender.
    MailFrom(TableMatch),
}

/// Where a rule's mail is going.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForCriterion {
    Local,
    Any,
    Domain(TableMatch),
    /// `for rcpt-to <table>`: any destination, with that recipient.
    RcptTo(TableMatch),
}

/// A criterion and whether it is negated with `!`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negatable<T> {
    pub negate: bool,
    pub value: T,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleDecision {
    Reject,
    Action(String),
}

/// One `match` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub from: Option<Negatable<FromCriterion>>,
    pub for_: Option<Negatable<ForCriterion>>,
    pub tag: Option<Negatable<TableMatch>>,
    pub helo: Option<Negatable<TableMatch>>,
    pub tls: Option<Negatable<()>>,
    pub auth: Option<Negatable<Option<TableMatch>>>,
    pub mail_from: Option<Negatable<TableMatch>>,
    pub rcpt_to: Option<Negatable<TableMatch>>,
    pub decision: RuleDecision,
    pub span: Span,
}

/// A key/value limit line (`smtp limit max-rcpt 10`).
pub type Limits = Vec<(String, i64)>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MtaLimit {
    pub domain: Option<String>,
    pub inet4: bool,
    pub inet6: bool,
    pub limits: Limits,
}

/// `smtp` options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmtpOptions {
    pub max_rcpt: i64,
    pub max_mails: i64,
    pub ciphers: Option<String>,
    pub max_message_size: u64,
    pub sub_addr_delim: char,
}

impl Default for SmtpOptions {
    fn default() -> SmtpOptions {
        SmtpOptions {
            max_rcpt: 1000,
            max_mails: 100,
            ciphers: None,
            max_message_size: 36_700_160,
            sub_addr_delim: '+',
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueOptions {
    pub compression: bool,
    /// `queue encryption [key]`.
    pub encryption: Option<Option<String>>,
    /// The key of `queue encryption`, once read and checked (from the configuration or,
    /// for `stdin`, `-` or no key, from standard input).
    pub key: Option<[u8; 32]>,
    pub ttl: Delay,
}

impl Default for QueueOptions {
    fn default() -> QueueOptions {
        QueueOptions {
            compression: false,
            encryption: None,
            key: None,
            ttl: Delay {
                spelled: "4d".into(),
                seconds: 4 * 86400,
            },
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SrsOptions {
    pub key: Option<String>,
    pub key_backup: Option<String>,
    pub ttl: Option<Delay>,
}

/// One statement of the file, in order, so that the configuration prints back in the order
/// it was written (anonymous tables are numbered in that order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item {
    Admd,
    Bounce,
    Ca(usize),
    Pki(usize),
    MdaLimit(usize),
    MdaWrapper(usize),
    MtaMaxDeferred,
    MtaLimit(usize),
    Proc(usize),
    Queue(QueueItem),
    SchedulerLimit(usize),
    Smtp(SmtpItem),
    Srs(SrsItem),
    Table(usize),
    Listener(usize),
    Filter(usize),
    Action(usize),
    Rule(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueItem {
    Compression,
    Encryption,
    Ttl,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpItem {
    Limit(usize),
    Ciphers,
    MaxMessageSize,
    SubAddrDelim,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SrsItem {
    Key,
    KeyBackup,
    Ttl,
}

/// A whole checked configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The server name (`/etc/mailname`, else the host name).
    pub hostname: String,
    pub admd: Option<String>,
    pub bounce_warn_interval: Vec<Delay>,
    pub cas: Vec<Ca>,
    pub pkis: Vec<Pki>,
    pub mda_limits: Vec<Limits>,
    pub mda_wrappers: Vec<(String, String)>,
    pub mta_max_deferred: Option<i64>,
    pub mta_limits: Vec<MtaLimit>,
    pub procs: Vec<Proc>,
    pub queue: QueueOptions,
    pub scheduler_limits: Vec<Limits>,
    pub smtp: SmtpOptions,
    pub smtp_limits: Vec<Limits>,
    pub srs: SrsOptions,
    pub tables: Vec<Table>,
    pub listeners: Vec<Listener>,
    pub filters: Vec<Filter>,
    pub actions: Vec<Action>,
    pub rules: Vec<Rule>,
    pub items: Vec<Item>,
}

impl Config {
    /// The value of an `mda limit` key (the last one given wins), if set.
    pub fn mda_limit(&self, key: &str) -> Option<i64> {
        self.mda_limits
            .iter()
            .flatten()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| *v)
    }

    pub fn table(&self, id: TableId) -> &Table {
        &self.tables[id.0]
    }

    pub fn table_named(&self, name: &str) -> Option<TableId> {
        self.tables.iter().position(|t| t.name == name).map(TableId)
    }

    pub fn action_named(&self, name: &str) -> Option<&Action> {
        self.actions.iter().find(|a| a.name == name)
    }

    pub fn filter_named(&self, name: &str) -> Option<&Filter> {
        self.filters.iter().find(|f| f.name == name)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.keyword())
    }
}
