//! `smtpd -n -v`: the checked configuration printed back as canonical smtpd.conf text.
//!
//! Macros are expanded, includes inlined, every name and value quoted, one statement a line,
//! in the order the file declared them. Reading the output again gives an equal [`Config`].

use std::fmt::Write as _;

use super::model::*;

/// Quote a string for smtpd.conf.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

struct Printer<'a> {
    cfg: &'a Config,
    out: String,
}

impl Printer<'_> {
    fn table(&self, id: TableId) -> String {
        let t = self.cfg.table(id);
        if !t.anonymous {
            return format!("<{}>", quote(&t.name));
        }
        inline(t)
    }

    fn table_match(&self, tm: &TableMatch) -> String {
        if tm.regex {
            format!("regex {}", self.table(tm.table))
        } else {
            self.table(tm.table)
        }
    }

    fn filter_ref(&self, name: &str) -> String {
        match self.cfg.filter_named(name) {
            Some(Filter {
                anonymous: true,
                kind: FilterKind::Chain(members),
                ..
            }) => {
                format!(
                    "filter {{ {} }}",
                    members
                        .iter()
                        .map(|m| quote(m))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
            _ => format!("filter {}", quote(name)),
        }
    }

    fn line(&mut self, s: String) {
        self.out.push_str(&s);
        self.out.push('\n');
    }

    fn limits(kvs: &Limits) -> String {
        kvs.iter()
            .map(|(k, v)| format!(" {} {v}", quote(k)))
            .collect()
    }

    fn item(&mut self, item: Item) {
        let c = self.cfg;
        match item {
            Item::Admd => {
                if let Some(a) = &c.admd {
                    self.line(format!("admd {}", quote(a)));
                }
            }
            Item::Bounce => {
                let d: Vec<String> = c
                    .bounce_warn_interval
                    .iter()
                    .map(|d| quote(&d.spelled))
                    .collect();
                self.line(format!("bounce warn-interval {}", d.join(", ")));
            }
            Item::Ca(i) => self.line(format!(
                "ca {} cert {}",
                quote(&c.cas[i].name),
                quote(&c.cas[i].cert)
            )),
            Item::Pki(i) => {
                let p = &c.pkis[i];
                let mut s = format!("pki {}", quote(&p.name));
                if let Some(x) = &p.cert {
                    let _ = write!(s, " cert {}", quote(x));
                }
                if let Some(x) = &p.key {
                    let _ = write!(s, " key {}", quote(x));
                }
                if let Some(x) = &p.dhe {
                    let _ = write!(s, " dhe {}", quote(x));
                }
                self.line(s);
            }
            Item::MdaLimit(i) => self.line(format!("mda limit{}", Self::limits(&c.mda_limits[i]))),
            Item::MdaWrapper(i) => {
                let (n, cmd) = &c.mda_wrappers[i];
                self.line(format!("mda wrapper {} {}", quote(n), quote(cmd)));
            }
            Item::MtaMaxDeferred => {
                if let Some(n) = c.mta_max_deferred {
                    self.line(format!("mta max-deferred {n}"));
                }
            }
            Item::MtaLimit(i) => {
                let m = &c.mta_limits[i];
                let mut s = "mta limit".to_string();
                if let Some(d) = &m.domain {
                    let _ = write!(s, " for domain {}", quote(d));
                }
                if m.inet4 {
                    s.push_str(" inet4");
                }
                if m.inet6 {
                    s.push_str(" inet6");
                }
                s.push_str(&Self::limits(&m.limits));
                self.line(s);
            }
            Item::Proc(i) => {
                let p = &c.procs[i];
                let s = format!(
                    "proc {} {}{}",
                    quote(&p.name),
                    quote(&p.command),
                    proc_opts(&p.user, &p.group, &p.chroot)
                );
                self.line(s);
            }
            Item::Queue(q) => match q {
                QueueItem::Compression => self.line("queue compression".into()),
                QueueItem::Encryption => match &c.queue.encryption {
                    Some(Some(k)) => self.line(format!("queue encryption {}", quote(k))),
                    _ => self.line("queue encryption".into()),
                },
                QueueItem::Ttl => self.line(format!("queue ttl {}", quote(&c.queue.ttl.spelled))),
            },
            Item::SchedulerLimit(i) => self.line(format!(
                "scheduler limit{}",
                Self::limits(&c.scheduler_limits[i])
            )),
            Item::Smtp(s) => match s {
                SmtpItem::Limit(i) => {
                    self.line(format!("smtp limit{}", Self::limits(&c.smtp_limits[i])))
                }
                SmtpItem::Ciphers => {
                    if let Some(x) = &c.smtp.ciphers {
                        self.line(format!("smtp ciphers {}", quote(x)));
                    }
                }
                SmtpItem::MaxMessageSize => {
                    self.line(format!("smtp max-message-size {}", c.smtp.max_message_size))
                }
                SmtpItem::SubAddrDelim => self.line(format!(
                    "smtp sub-addr-delim {}",
                    quote(&c.smtp.sub_addr_delim.to_string())
                )),
            },
            Item::Srs(s) => match s {
                SrsItem::Key => self.line(format!(
                    "srs key {}",
                    quote(c.srs.key.as_deref().unwrap_or(""))
                )),
                SrsItem::KeyBackup => self.line(format!(
                    "srs key backup {}",
                    quote(c.srs.key_backup.as_deref().unwrap_or(""))
                )),
                SrsItem::Ttl => {
                    if let Some(d) = &c.srs.ttl {
                        self.line(format!("srs ttl {}", quote(&d.spelled)));
                    }
                }
            },
            Item::Table(i) => {
                let t = &c.tables[i];
                let body = match &t.backend {
                    TableBackend::File { spelled, .. } => quote(spelled),
                    TableBackend::Db { path } => quote(&format!("db:{path}")),
                    TableBackend::External { backend, config } => {
                        if config.is_empty() {
                            quote(backend)
                        } else {
                            quote(&format!("{backend}:{config}"))
                        }
                    }
                    _ => inline(t),
                };
                self.line(format!("table {} {}", quote(&t.name), body));
            }
            Item::Listener(i) => {
                let s = self.listener(&c.listeners[i]);
                self.line(s);
            }
            Item::Filter(i) => {
                let s = self.filter(&c.filters[i]);
                self.line(s);
            }
            Item::Action(i) => {
                let s = self.action(&c.actions[i]);
                self.line(s);
            }
            Item::Rule(i) => {
                let s = self.rule(&c.rules[i]);
                self.line(s);
            }
        }
    }

    fn listener(&self, l: &Listener) -> String {
        let mut s = match &l.on {
            ListenOn::Socket => "listen on socket".to_string(),
            ListenOn::Interface(i) => format!("listen on {}", quote(i)),
        };
        match l.family {
            Some(Family::Inet4) => s.push_str(" inet4"),
            Some(Family::Inet6) => s.push_str(" inet6"),
            None => {}
        }
        if let Some(p) = &l.port {
            if p.spelled.bytes().all(|b| b.is_ascii_digit()) {
                let _ = write!(s, " port {}", p.number);
            } else {
                let _ = write!(s, " port {}", quote(&p.spelled));
            }
        }
        match l.tls {
            Some(TlsMode::Tls) => s.push_str(" tls"),
            Some(TlsMode::TlsRequire { verify }) => s.push_str(if verify {
                " tls-require verify"
            } else {
                " tls-require"
            }),
            Some(TlsMode::Smtps { verify }) => {
                s.push_str(if verify { " smtps verify" } else { " smtps" })
            }
            None => {}
        }
        if let Some(p) = &l.pki {
            let _ = write!(s, " pki {}", quote(p));
        }
        if let Some(p) = &l.ca {
            let _ = write!(s, " ca {}", quote(p));
        }
        match l.auth {
            Some(AuthMode::Required(t)) => {
                s.push_str(" auth");
                if let Some(t) = t {
                    let _ = write!(s, " {}", self.table(t));
                }
            }
            Some(AuthMode::Optional(t)) => {
                s.push_str(" auth-optional");
                if let Some(t) = t {
                    let _ = write!(s, " {}", self.table(t));
                }
            }
            None => {}
        }
        if let Some(t) = &l.tag {
            let _ = write!(s, " tag {}", quote(t));
        }
        if let Some(h) = &l.hostname {
            let _ = write!(s, " hostname {}", quote(h));
        }
        if let Some(t) = l.hostnames {
            let _ = write!(s, " hostnames {}", self.table(t));
        }
        if l.mask_src {
            s.push_str(" mask-src");
        }
        if l.received_auth {
            s.push_str(" received-auth");
        }
        if l.no_dsn {
            s.push_str(" no-dsn");
        }
        if l.proxy_v2 {
            s.push_str(" proxy-v2");
        }
        if l.auth_plaintext {
            s.push_str(" auth-plaintext");
        }
        if let Some((t, masq)) = l.senders {
            let _ = write!(
                s,
                " senders {}{}",
                self.table(t),
                if masq { " masquerade" } else { "" }
            );
        }
        if let Some(f) = &l.filter {
            let _ = write!(s, " {}", self.filter_ref(f));
        }
        s
    }

    fn filter(&self, f: &Filter) -> String {
        let head = format!("filter {}", quote(&f.name));
        match &f.kind {
            FilterKind::Proc(p) => format!("{head} proc {}", quote(p)),
            FilterKind::ProcExec {
                command,
                user,
                group,
                chroot,
            } => {
                format!(
                    "{head} proc-exec {}{}",
                    quote(command),
                    proc_opts(user, group, chroot)
                )
            }
            FilterKind::Chain(m) => format!(
                "{head} chain {{ {} }}",
                m.iter().map(|x| quote(x)).collect::<Vec<_>>().join(", ")
            ),
            FilterKind::Builtin(b) => {
                let cond = match &b.condition {
                    Condition::Fcrdns => "fcrdns".to_string(),
                    Condition::Rdns(None) => "rdns".to_string(),
                    Condition::Rdns(Some(t)) => format!("rdns {}", self.table_match(t)),
                    Condition::Src(t) => format!("src {}", self.table_match(t)),
                    Condition::Helo(t) => format!("helo {}", self.table_match(t)),
                    Condition::Auth(None) => "auth".to_string(),
                    Condition::Auth(Some(t)) => format!("auth {}", self.table_match(t)),
                    Condition::MailFrom(t) => format!("mail-from {}", self.table_match(t)),
                    Condition::RcptTo(t) => format!("rcpt-to {}", self.table_match(t)),
                };
                let dec = match &b.decision {
                    Decision::Junk => "junk".to_string(),
                    Decision::Bypass => "bypass".to_string(),
                    Decision::Reject(m) => format!("reject {}", quote(m)),
                    Decision::Disconnect(m) => format!("disconnect {}", quote(m)),
                    Decision::Rewrite(m) => format!("rewrite {}", quote(m)),
                    Decision::Report(m) => format!("report {}", quote(m)),
                };
                format!(
                    "{head} phase {} match {}{cond} {dec}",
                    b.phase.keyword(),
                    if b.negate { "!" } else { "" }
                )
            }
        }
    }

    fn action(&self, a: &Action) -> String {
        let mut s = format!("action {}", quote(&a.name));
        match &a.method {
            ActionMethod::Local(l) => {
                match &l.method {
                    LocalMethod::Mbox => s.push_str(" mbox"),
                    LocalMethod::Maildir { path, junk } => {
                        s.push_str(" maildir");
                        if let Some(p) = path {
                            let _ = write!(s, " {}", quote(p));
                        }
                        if *junk {
                            s.push_str(" junk");
                        }
                    }
                    LocalMethod::Lmtp {
                        destination,
                        rcpt_to,
                    } => {
                        let _ = write!(
                            s,
                            " lmtp {}{}",
                            quote(destination),
                            if *rcpt_to { " rcpt-to" } else { "" }
                        );
                    }
                    LocalMethod::Mda(cmd) => {
                        let _ = write!(s, " mda {}", quote(cmd));
                    }
                    LocalMethod::ForwardOnly => s.push_str(" forward-only"),
                    LocalMethod::ExpandOnly => s.push_str(" expand-only"),
                }
                if let Some(t) = l.alias {
                    let _ = write!(s, " alias {}", self.table(t));
                }
                if let Some(t) = l.virtual_ {
                    let _ = write!(s, " virtual {}", self.table(t));
                }
                if let Some(t) = l.userbase {
                    let _ = write!(s, " userbase {}", self.table(t));
                }
                if let Some(u) = &l.user {
                    let _ = write!(s, " user {}", quote(u));
                }
                if let Some(w) = &l.wrapper {
                    let _ = write!(s, " wrapper {}", quote(w));
                }
            }
            ActionMethod::Relay(r) => {
                s.push_str(" relay");
                if let Some(x) = &r.helo {
                    let _ = write!(s, " helo {}", quote(x));
                }
                if let Some(t) = r.helo_src {
                    let _ = write!(s, " helo-src {}", self.table(t));
                }
                if let Some(x) = &r.pki {
                    let _ = write!(s, " pki {}", quote(x));
                }
                if let Some(x) = &r.ca {
                    let _ = write!(s, " ca {}", quote(x));
                }
                if let Some(t) = r.src {
                    let _ = write!(s, " src {}", self.table(t));
                }
                if let Some(x) = &r.mail_from {
                    let _ = write!(s, " mail-from {}", quote(x));
                }
                match &r.backup {
                    Some(Some(mx)) => {
                        let _ = write!(s, " backup mx {}", quote(mx));
                    }
                    Some(None) => s.push_str(" backup"),
                    None => {}
                }
                if let Some(t) = r.host {
                    let _ = write!(s, " host {}", self.table(t));
                }
                if let Some(t) = r.domain {
                    let _ = write!(s, " domain {}", self.table(t));
                }
                match r.tls {
                    Some(true) => s.push_str(" tls no-verify"),
                    Some(false) => s.push_str(" tls"),
                    None => {}
                }
                if let Some(t) = r.auth {
                    let _ = write!(s, " auth {}", self.table(t));
                }
                if let Some(f) = &r.filter {
                    let _ = write!(s, " {}", self.filter_ref(f));
                }
                if r.srs {
                    s.push_str(" srs");
                }
            }
        }
        if let Some(t) = &a.ttl {
            let _ = write!(s, " ttl {}", quote(&t.spelled));
        }
        s
    }

    fn rule(&self, r: &Rule) -> String {
        let mut s = "match".to_string();
        let neg = |n: bool| if n { " !" } else { " " };
        let mut auth_done = false;
        let mut mail_from_done = false;
        let mut rcpt_to_done = false;
        if let Some(f) = &r.from {
            let body = match &f.value {
                FromCriterion::Socket => "socket".to_string(),
                FromCriterion::Local => "local".to_string(),
                FromCriterion::Any => "any".to_string(),
                FromCriterion::Src(t) => format!("src {}", self.table_match(t)),
                FromCriterion::Rdns(None) => "rdns".to_string(),
                FromCriterion::Rdns(Some(t)) => format!("rdns {}", self.table_match(t)),
                FromCriterion::Auth(t) => {
                    auth_done = true;
                    match t {
                        Some(t) => format!("auth {}", self.table_match(t)),
                        None => "auth".to_string(),
                    }
                }
                FromCriterion::MailFrom(t) => {
                    mail_from_done = true;
                    format!("mail-from {}", self.table_match(t))
                }
            };
            let _ = write!(s, "{}from {body}", neg(f.negate));
        }
        if let Some(f) = &r.for_ {
            let body = match &f.value {
                ForCriterion::Local => "local".to_string(),
                ForCriterion::Any => "any".to_string(),
                ForCriterion::Domain(t) => format!("domain {}", self.table_match(t)),
                ForCriterion::RcptTo(t) => {
                    rcpt_to_done = true;
                    format!("rcpt-to {}", self.table_match(t))
                }
            };
            let _ = write!(s, "{}for {body}", neg(f.negate));
        }
        if let Some(t) = &r.tag {
            let _ = write!(s, "{}tag {}", neg(t.negate), self.table_match(&t.value));
        }
        if let Some(t) = &r.helo {
            let _ = write!(s, "{}helo {}", neg(t.negate), self.table_match(&t.value));
        }
        if let (Some(t), false) = (&r.mail_from, mail_from_done) {
            let _ = write!(
                s,
                "{}mail-from {}",
                neg(t.negate),
                self.table_match(&t.value)
            );
        }
        if let (Some(t), false) = (&r.rcpt_to, rcpt_to_done) {
            let _ = write!(s, "{}rcpt-to {}", neg(t.negate), self.table_match(&t.value));
        }
        if let (Some(t), false) = (&r.auth, auth_done) {
            match &t.value {
                Some(tm) => {
                    let _ = write!(s, "{}auth {}", neg(t.negate), self.table_match(tm));
                }
                None => {
                    let _ = write!(s, "{}auth", neg(t.negate));
                }
            }
        }
        if let Some(t) = &r.tls {
            let _ = write!(s, "{}tls", neg(t.negate));
        }
        match &r.decision {
            RuleDecision::Reject => s.push_str(" reject"),
            RuleDecision::Action(a) => {
                let _ = write!(s, " action {}", quote(a));
            }
        }
        s
    }
}

fn proc_opts(user: &Option<String>, group: &Option<String>, chroot: &Option<String>) -> String {
    let mut s = String::new();
    if let Some(u) = user {
        let _ = write!(s, " user {}", quote(u));
    }
    if let Some(g) = group {
        let _ = write!(s, " group {}", quote(g));
    }
    if let Some(c) = chroot {
        let _ = write!(s, " chroot {}", quote(c));
    }
    s
}

/// An inline table: `{ "a", "b" }` or `{ "k" = "v" }`.
fn inline(t: &Table) -> String {
    let items: Vec<String> = match t.kind {
        TableKind::Mapping => t
            .entries
            .iter()
            .map(|(k, v)| format!("{} = {}", quote(k), quote(v)))
            .collect(),
        _ => t.entries.keys().map(|k| quote(k)).collect(),
    };
    format!("{{ {} }}", items.join(", "))
}

/// Print a configuration as smtpd.conf text.
pub fn print(cfg: &Config) -> String {
    let mut p = Printer {
        cfg,
        out: String::new(),
    };
    for item in &cfg.items {
        p.item(*item);
    }
    p.out
}
