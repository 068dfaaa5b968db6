//! Recipient expansion: one RCPT address → the deliveries it stands for, or the reply that
//! refuses it. This is OpenSMTPD 6.8's `lka_session.c` / `aliases.c` / `forward.c`.
//!
//! The RCPT is the root of a tree ([`node::Tree`]) whose nodes are expanded first in, first
//! out. An address node goes through the `match` rules again (every address expansion
//! produces is re-routed, as OpenSMTPD does); a relay rule makes it a relay delivery, a local
//! rule expands it by the action's virtual table or into a username. A username is looked up
//! in the action's aliases, then in its userbase, then its `.forward` file is read; with no
//! aliases and no `.forward` it is delivered to. Files, commands and `error:` nodes end the
//! branch. The first failure refuses the whole RCPT with OpenSMTPD's reply; nothing found at
//! all is `524 5.2.4 Mailing list expansion problem`.
//!
//! Observability: every `-T expand` trace line OpenSMTPD writes is written here through
//! `tracing` (target `expand`), with the `-T rules` line of each rule evaluation (target
//! `rules`), the `-T lookup` lines of the alias, virtual and userinfo lookups made (target
//! `lookup`) and the `-v` debug and info lines. Pointers in trace lines are numbers stable
//! within one expansion (see [`node::Heap`]). Tests read the lines with a capturing
//! `tracing` subscriber; nothing is returned besides the outcome.
//!
//! Not done here: SRS decoding of bounce recipients (`srs key`), which needs HMAC-SHA1.

pub mod forward;
pub mod node;
pub mod userbase;

use crate::config::model::{ActionMethod, LocalAction, LocalMethod, RuleDecision, TableBackend};
use crate::rules::RuleGraph;
use crate::rules::route::{Facts, Verdict};

use forward::{
    DiskIncludes, ForwardFiles, ForwardOpen, HomeForwards, IncludeFiles, MAX_FORWARD_SIZE,
};
use node::{
    EXPAND_DEPTH, FORWARD_SYNTAX, Heap, INCLUDE_SYNTAX, MAX_FORWARD_NODES, Mailaddr, Node, Tree,
    ValueTree, logical_lines, parse_line,
};
use userbase::{LookupError, SystemPasswd, TableUserbase, UserInfo, Userbase};

/// The unprivileged user commands and files from aliases run as (Debian's name for
/// OpenSMTPD's `_smtpd`).
pub const SMTPD_USER: &str = "opensmtpd";

/// What expansion reads besides the configuration: the system password database (the
/// `<getpwnam>` userbase), users' `.forward` files and alias include files.
#[derive(Clone, Copy)]
pub struct Sources<'a> {
    pub passwd: &'a dyn Userbase,
    pub forwards: &'a dyn ForwardFiles,
    pub includes: &'a dyn IncludeFiles,
}

impl Sources<'static> {
    /// The real machine: `getpwnam(3)`, `<home>/.forward`, include files on disk.
    pub fn system() -> Sources<'static> {
        Sources {
            passwd: &SystemPasswd,
            forwards: &HomeForwards,
            includes: &DiskIncludes,
        }
    }
}

/// Whom a file or command delivery runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAs {
    /// The real user whose `.forward` named it.
    User(UserInfo),
    /// [`SMTPD_USER`]: the file or command came from an alias.
    Smtpd,
}

/// Where one delivery goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Relay to another host: the envelope's destination is [`Delivery::dest`].
    Relay,
    /// A local user's mailbox, by the action's method (mbox, maildir, lmtp, mda).
    Mailbox {
        user: UserInfo,
        /// The `+tag` of the recipient (`EXTENSION`, maildir folders).
        subaddress: String,
        method: LocalMethod,
    },
    /// Append to a file named by an alias or `.forward`.
    File { path: String, run_as: RunAs },
    /// Pipe to a command named by an alias or `.forward` (without the `|`).
    Command { command: String, run_as: RunAs },
}

/// One delivery an RCPT expanded into: what the queue stores as an envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The action (dispatcher) name.
    pub action: String,
    /// The RCPT address as given (qualified), for `Delivered-To:` and `%{rcpt}`.
    pub rcpt: Mailaddr,
    /// The address this delivery descends from: the RCPT itself, or an address an alias,
    /// virtual entry or `.forward` produced (`%{dest}`); for relays, where to relay to.
    pub dest: Mailaddr,
    pub target: Target,
}

/// Why an RCPT is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// A 4xx refusal (the client may try again later).
    pub temporary: bool,
    /// The reply text before the address, e.g. `550 Invalid recipient`.
    pub message: String,
}

impl Refusal {
    /// The RCPT reply: `MESSAGE: <RCPT>`.
    pub fn reply(&self, rcpt: &str) -> String {
        format!("{}: <{}>", self.message, rcpt)
    }
}

/// The result of expanding one RCPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpandOutcome {
    /// Every delivery the RCPT stands for (never empty).
    Accepted(Vec<Delivery>),
    Refused(Refusal),
}

impl ExpandOutcome {
    /// The deliveries, if accepted.
    pub fn deliveries(&self) -> Option<&[Delivery]> {
        match self {
            ExpandOutcome::Accepted(d) => Some(d),
            ExpandOutcome::Refused(_) => None,
        }
    }

    /// The refusal, if refused.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            ExpandOutcome::Refused(r) => Some(r),
            ExpandOutcome::Accepted(_) => None,
        }
    }
}

const TEMP_EXPANSION: &str = "424 4.2.4 Mailing list expansion problem";
const PERM_EXPANSION: &str = "524 5.2.4 Mailing list expansion problem";

/// A failure in progress: OpenSMTPD's `error` and `errormsg` (the message defaults to
/// `550 Invalid recipient` / `451 Temporary failure`).
#[derive(Debug)]
struct Failure {
    temporary: bool,
    message: Option<String>,
}

/// Expand the RCPT `rcpt` (`user@domain`, qualified) of a transaction described by `facts`.
pub fn expand(graph: &RuleGraph, facts: &Facts, rcpt: &str, sources: &Sources) -> ExpandOutcome {
    let mut heap = Heap::default();
    let tree = Tree::new(&mut heap);
    let mut x = Expansion {
        graph,
        facts,
        rcpt: Mailaddr::parse(rcpt),
        sources,
        heap,
        tree,
        deliveries: Vec::new(),
        failure: None,
    };
    x.run()
}

struct Expansion<'g, 'f, 's> {
    graph: &'g RuleGraph,
    facts: &'f Facts<'f>,
    rcpt: Mailaddr,
    sources: &'s Sources<'s>,
    heap: Heap,
    tree: Tree,
    deliveries: Vec<Delivery>,
    failure: Option<Failure>,
}

impl Expansion<'_, '_, '_> {
    fn run(&mut self) -> ExpandOutcome {
        let root = Node::Address(self.rcpt.clone());
        self.tree.insert(&mut self.heap, root);
        while self.failure.is_none() {
            let Some(i) = self.tree.pop() else { break };
            self.expand_node(i);
            if self.failure.is_none() && self.tree.overflow {
                tracing::trace!(target: "expand", "expand: lka_expand: too many nodes");
                self.fail(false, Some(PERM_EXPANSION));
            }
        }
        if self.failure.is_none() && self.deliveries.is_empty() {
            tracing::trace!(
                target: "expand",
                "expand: lka_done: expanded to empty delivery list"
            );
            self.fail(false, Some(PERM_EXPANSION));
        }
        self.tree.trace_clear();
        match self.failure.take() {
            None => ExpandOutcome::Accepted(std::mem::take(&mut self.deliveries)),
            Some(f) => {
                let message = f.message.unwrap_or_else(|| {
                    if f.temporary {
                        "451 Temporary failure".to_string()
                    } else {
                        "550 Invalid recipient".to_string()
                    }
                });
                ExpandOutcome::Refused(Refusal {
                    temporary: f.temporary,
                    message,
                })
            }
        }
    }

    /// Record a failure, keeping the first message set (as OpenSMTPD's `errormsg`).
    fn fail(&mut self, temporary: bool, message: Option<&str>) {
        match &mut self.failure {
            Some(f) => {
                if f.message.is_none() {
                    f.message = message.map(str::to_string);
                }
            }
            None => {
                self.failure = Some(Failure {
                    temporary,
                    message: message.map(str::to_string),
                })
            }
        }
    }

    fn local_action(&self, rule: usize) -> Option<(&str, &LocalAction)> {
        let RuleDecision::Action(name) = &self.graph.config.rules.get(rule)?.decision else {
            return None;
        };
        let action = self.graph.config.action_named(name)?;
        match &action.method {
            ActionMethod::Local(l) => Some((action.name.as_str(), l)),
            ActionMethod::Relay(_) => None,
        }
    }

    fn expand_node(&mut self, i: usize) {
        let slot = self.tree.slot(i);
        if slot.depth >= EXPAND_DEPTH {
            tracing::trace!(target: "expand", "expand: lka_expand: node too deep.");
            self.fail(false, Some(PERM_EXPANSION));
            return;
        }
        let depth = slot.depth;
        let rule = slot.rule;
        match slot.node.clone() {
            Node::Address(addr) => self.expand_address(i, addr, depth),
            Node::Username(name) => match rule {
                Some(rule) => self.expand_username(i, rule, name, depth),
                None => self.fail(true, None),
            },
            Node::Filename(path) => {
                let Some(rule) = rule else {
                    return self.fail(true, None);
                };
                if self.is_forward_only(rule) {
                    tracing::trace!(target: "expand", "expand: filename matched on forward-only rule");
                    self.fail(true, None);
                    return;
                }
                tracing::trace!(
                    target: "expand",
                    "expand: lka_expand: filename: {} [depth={}]",
                    path,
                    depth
                );
                self.submit(rule, i);
            }
            Node::Filter(command) => {
                let Some(rule) = rule else {
                    return self.fail(true, None);
                };
                if self.is_forward_only(rule) {
                    tracing::trace!(target: "expand", "expand: filter matched on forward-only rule");
                    self.fail(true, None);
                    return;
                }
                tracing::trace!(
                    target: "expand",
                    "expand: lka_expand: filter: {} [depth={}]",
                    command,
                    depth
                );
                self.submit(rule, i);
            }
            Node::Error(text) => {
                if rule.is_some_and(|r| self.is_forward_only(r)) {
                    tracing::trace!(target: "expand", "expand: error matched on forward-only rule");
                    self.fail(true, None);
                    return;
                }
                tracing::trace!(
                    target: "expand",
                    "expand: lka_expand: error: {} [depth={}]",
                    text,
                    depth
                );
                // The parser only makes 4xx and 5xx errors.
                self.failure = Some(Failure {
                    temporary: text.starts_with('4'),
                    message: Some(text),
                });
            }
            // Includes are read when their alias is looked up and never queued.
            Node::Include(_) => self.fail(true, None),
        }
    }

    fn is_forward_only(&self, rule: usize) -> bool {
        self.local_action(rule)
            .is_some_and(|(_, l)| l.method == LocalMethod::ForwardOnly)
    }

    fn expand_address(&mut self, i: usize, mut addr: Mailaddr, depth: usize) {
        tracing::trace!(
            target: "expand",
            "expand: lka_expand: address: {} [depth={}]",
            addr,
            depth
        );
        let mut expanded = self.tree.slot(i).parent.is_some();
        // A bounce to one of our SRS addresses goes to the sender it stands for.
        if self.facts.sender == "@"
            && crate::srs::is_srs(&addr.user)
            && let Some(keys) = crate::srs::SrsKeys::from_config(&self.graph.config.srs)
        {
            let text = addr.to_string();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            match crate::srs::decode(&keys, &text, now) {
                Some(decoded) if decoded.contains('@') => {
                    addr = Mailaddr::parse(&decoded);
                    expanded = true;
                    self.tree.slot_mut(i).node = Node::Address(addr.clone());
                }
                _ => tracing::warn!("SRS failed to decode: {text}"),
            }
        }
        let facts = Facts {
            expanded,
            ..self.facts.clone()
        };
        let dest = addr.to_string();
        let rule = match self.graph.route(&facts, &dest) {
            Verdict::Action { rule, .. } => {
                self.trace_rule(rule);
                rule
            }
            Verdict::Reject { rule } => {
                self.trace_rule(rule);
                self.fail(false, None);
                return;
            }
            Verdict::NoMatch => {
                tracing::trace!(target: "rules", "no rule matched");
                self.fail(false, None);
                return;
            }
            Verdict::TempFail => {
                tracing::trace!(target: "rules", "temporary failure in processing of a rule");
                self.fail(true, None);
                return;
            }
        };
        let Some((_, local)) = self.local_action(rule) else {
            // A relay action: the address itself is the delivery.
            self.submit(rule, i);
            return;
        };
        let virtual_table = local.virtual_;
        self.tree.rule = Some(rule);
        self.tree.parent = Some(i);
        if let Some(table) = virtual_table {
            let key = Mailaddr {
                user: addr.user.to_ascii_lowercase(),
                domain: addr.domain.clone(),
            };
            match self.virtual_get(table, &key) {
                Err(()) => {
                    tracing::trace!(
                        target: "expand",
                        "expand: lka_expand: error in virtual alias lookup"
                    );
                    self.fail(true, Some(TEMP_EXPANSION));
                }
                Ok(0) => {
                    tracing::trace!(target: "expand", "expand: lka_expand: no aliases for virtual");
                    self.fail(false, Some(PERM_EXPANSION));
                }
                Ok(_) => {}
            }
        } else {
            self.tree.slot_mut(i).rule = Some(rule);
            let user = Node::Username(addr.user.to_ascii_lowercase());
            self.tree.insert(&mut self.heap, user);
        }
    }

    fn trace_rule(&self, rule: usize) {
        if let Some(r) = self.graph.config.rules.get(rule) {
            tracing::trace!(
                target: "rules",
                "rule #{} matched: {}",
                rule + 1,
                self.graph.rule_to_text(r)
            );
        }
    }

    fn expand_username(&mut self, i: usize, rule: usize, name: String, depth: usize) {
        let sameuser = self.tree.slot(i).sameuser;
        tracing::trace!(
            target: "expand",
            "expand: lka_expand: username: {} [depth={}, sameuser={}]",
            name,
            depth,
            u8::from(sameuser)
        );
        let Some((_, local)) = self.local_action(rule) else {
            self.fail(true, None);
            return;
        };
        let (alias, virtual_table, userbase, method) = (
            local.alias,
            local.virtual_,
            local.userbase,
            local.method.clone(),
        );
        self.tree.rule = Some(rule);
        self.tree.parent = Some(i);

        // 1. Aliases (or virtual entries for a bare user) replace the user.
        if !sameuser && (alias.is_some() || virtual_table.is_some()) {
            let found = if let Some(t) = alias {
                self.aliases_get(t, &name)
            } else if let Some(t) = virtual_table {
                let bare = Mailaddr {
                    user: name.clone(),
                    domain: String::new(),
                };
                self.virtual_get(t, &bare)
            } else {
                Ok(0)
            };
            match found {
                Err(()) => {
                    tracing::trace!(target: "expand", "expand: lka_expand: error in alias lookup");
                    self.fail(true, Some(TEMP_EXPANSION));
                    return;
                }
                Ok(n) if n > 0 => return,
                Ok(_) => {}
            }
        }

        // 2. gilles+hackers@ -> gilles@
        let delim = self.graph.config.smtp.sub_addr_delim;
        let mut user = name;
        if let Some(pos) = user.find(delim) {
            let tag = user[pos + delim.len_utf8()..].to_string();
            user.truncate(pos);
            let slot = self.tree.slot_mut(i);
            slot.subaddress = tag;
            slot.node = Node::Username(user.clone());
        }

        // 3. The userbase.
        let found = self.userbase_lookup(userbase, &user);
        let info = match found {
            Err(_) => {
                tracing::trace!(
                    target: "expand",
                    "expand: lka_expand: backend error while searching user"
                );
                self.fail(true, None);
                return;
            }
            Ok(None) => {
                tracing::trace!(
                    target: "expand",
                    "expand: lka_expand: user-part does not match system user"
                );
                self.fail(false, None);
                return;
            }
            Ok(Some(info)) => info,
        };
        self.tree.make_real(i, info.clone());

        // 4. The user's own name in their .forward: delivered, not read again.
        let parent_forwarded = self
            .tree
            .slot(i)
            .parent
            .is_some_and(|p| self.tree.slot(p).forwarded);
        if sameuser && parent_forwarded {
            tracing::trace!(target: "expand", "expand: lka_expand: same user, submitting");
            self.submit(rule, i);
            return;
        }

        // 5. The .forward file.
        self.tree.slot_mut(i).forwarded = true;
        let u = info.name.as_str();
        let no_forward = |x: &mut Self, what: &str| match method {
            LocalMethod::ForwardOnly => {
                tracing::trace!(
                    target: "expand",
                    "expand: {} .forward for user {} on forward-only rule",
                    what,
                    u
                );
                x.fail(true, Some(TEMP_EXPANSION));
            }
            LocalMethod::ExpandOnly => {
                tracing::trace!(
                    target: "expand",
                    "expand: {} .forward for user {} and no default action on rule",
                    what,
                    u
                );
                x.fail(false, Some(PERM_EXPANSION));
            }
            _ => {
                tracing::trace!(
                    target: "expand",
                    "expand: {} .forward for user {}, just deliver",
                    what,
                    u
                );
                x.submit(rule, i);
            }
        };
        match self.sources.forwards.open(&info) {
            ForwardOpen::PermanentFailure => {
                tracing::trace!(target: "expand", "expand: ~/.forward failed for user {}", u);
                self.fail(false, Some(PERM_EXPANSION));
            }
            ForwardOpen::TemporaryFailure => self.fail(true, Some(TEMP_EXPANSION)),
            ForwardOpen::Missing => no_forward(self, "no"),
            ForwardOpen::Found(content) => {
                self.tree.rule = Some(rule);
                self.tree.parent = Some(i);
                match self.forwards_get(&content) {
                    Err(()) => {
                        tracing::trace!(
                            target: "expand",
                            "expand: temporary forward error for user {}",
                            u
                        );
                        self.fail(true, Some(TEMP_EXPANSION));
                    }
                    Ok(false) => no_forward(self, "empty"),
                    Ok(true) => {}
                }
            }
        }
    }

    /// The userbase of an action: its table, or the system password database.
    fn userbase_lookup(
        &self,
        table: Option<crate::config::model::TableId>,
        user: &str,
    ) -> Result<Option<UserInfo>, LookupError> {
        match table {
            Some(id) => {
                let t = self.graph.config.table(id);
                let system = match &t.backend {
                    TableBackend::Builtin => t.name == "<getpwnam>",
                    TableBackend::External { backend, .. } => backend == "getpwnam",
                    _ => false,
                };
                if system {
                    return self.sources.passwd.lookup(user);
                }
                TableUserbase {
                    compiled: &self.graph.table(id),
                }
                .lookup(user)
            }
            None => self.sources.passwd.lookup(user),
        }
    }

    /// One alias-service lookup; `Err` when the table cannot answer.
    fn alias_lookup(
        &self,
        table: crate::config::model::TableId,
        key: &str,
    ) -> Result<Option<String>, ()> {
        self.graph
            .table(table)
            .get(crate::table::Service::Alias, key)
            .map(|v| v.map(std::borrow::Cow::into_owned))
            .map_err(|_| ())
    }

    /// `aliases_get`: the user with its tag, then without. Returns how many aliases were
    /// merged (0: not found).
    fn aliases_get(
        &mut self,
        table: crate::config::model::TableId,
        user: &str,
    ) -> Result<usize, ()> {
        let key = user.to_ascii_lowercase();
        let delim = self.graph.config.smtp.sub_addr_delim;
        let mut value = self.alias_lookup(table, &key)?;
        if value.is_none()
            && let Some(pos) = key.find(delim)
        {
            value = self.alias_lookup(table, &key[..pos])?;
        }
        let Some(value) = value else { return Ok(0) };
        let n = self.merge_value(&value)?;
        tracing::debug!("debug: aliases_get: returned {} aliases", n);
        Ok(n)
    }

    /// `aliases_virtual_get`: `user+tag@domain`, `user@domain`, `user+tag`, `user`, `@domain`,
    /// `@` (the last two only with a domain).
    fn virtual_get(
        &mut self,
        table: crate::config::model::TableId,
        addr: &Mailaddr,
    ) -> Result<usize, ()> {
        let delim = self.graph.config.smtp.sub_addr_delim;
        let mut user = addr.user.to_ascii_lowercase();
        let domain = addr.domain.to_ascii_lowercase();
        let mut tag = String::new();
        if let Some(pos) = user.find(delim) {
            tag = user[pos + delim.len_utf8()..].to_string();
            user.truncate(pos);
        }
        let mut keys = Vec::new();
        if !tag.is_empty() {
            keys.push(format!("{user}{delim}{tag}@{domain}"));
        }
        keys.push(format!("{user}@{domain}"));
        if !tag.is_empty() {
            keys.push(format!("{user}{delim}{tag}"));
        }
        keys.push(user.clone());
        if !domain.is_empty() {
            keys.push(format!("@{domain}"));
            keys.push("@".to_string());
        }
        for key in keys {
            if let Some(value) = self.alias_lookup(table, &key)? {
                let n = self.merge_value(&value)?;
                tracing::debug!(
                    "debug: aliases_virtual_get: '{}' resolved to {} nodes",
                    key,
                    n
                );
                return Ok(n);
            }
        }
        Ok(0)
    }

    /// Parse an alias value into a short-lived tree and merge its nodes into the expansion
    /// tree under the current parent, reading include files. Returns the count OpenSMTPD
    /// reports (an include counts 1 when its file could be read).
    fn merge_value(&mut self, value: &str) -> Result<usize, ()> {
        let mut temp = ValueTree::new(&mut self.heap);
        let parsed = parse_line(value);
        for node in parsed.nodes {
            temp.insert(&mut self.heap, node);
        }
        if !parsed.complete {
            temp.trace_free();
            return Err(());
        }
        let mut n = 0;
        for node in temp.nodes() {
            match node {
                Node::Include(path) => n += self.include(path),
                other => {
                    self.tree.insert(&mut self.heap, other.clone());
                    n += 1;
                }
            }
        }
        temp.trace_free();
        Ok(n)
    }

    /// Read an include file into the tree (nested includes are ignored). 1 if it was read.
    fn include(&mut self, path: &str) -> usize {
        let content = match self.sources.includes.read(path) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(
                    "warn: failed to open include file \"{}\".: {}",
                    path,
                    forward::strerror(&e)
                );
                return 0;
            }
        };
        for line in logical_lines(&content, INCLUDE_SYNTAX) {
            // A line that is not text is not a valid value: it names nobody.
            let Ok(text) = std::str::from_utf8(&line) else {
                continue;
            };
            for node in parse_line(text).nodes {
                if !matches!(node, Node::Include(_)) {
                    self.tree.insert(&mut self.heap, node);
                }
            }
        }
        1
    }

    /// `forwards_get`: read a `.forward` into the tree under the current parent. `Ok(true)`
    /// when it added nodes, `Ok(false)` when it is empty or only repeats nodes, `Err` for a
    /// temporary failure (too large, parse error, too many nodes).
    fn forwards_get(&mut self, content: &[u8]) -> Result<bool, ()> {
        if content.is_empty() {
            tracing::info!("info: forward file is empty");
            return Ok(false);
        }
        if content.len() >= MAX_FORWARD_SIZE {
            tracing::info!("info: forward file exceeds max size");
            return Err(());
        }
        let before = self.tree.inserted;
        for line in logical_lines(content, FORWARD_SYNTAX) {
            let parsed = match std::str::from_utf8(&line) {
                Ok(text) => parse_line(text),
                Err(_) => Default::default(),
            };
            let complete = parsed.complete;
            for node in parsed.nodes {
                if !matches!(node, Node::Include(_)) {
                    self.tree.insert(&mut self.heap, node);
                }
            }
            if !complete {
                tracing::info!("info: parse error in forward file");
                return Err(());
            }
            if self.tree.inserted > MAX_FORWARD_NODES {
                tracing::info!("info: forward file expanded too many nodes");
                return Err(());
            }
        }
        Ok(self.tree.inserted > before)
    }

    /// `lka_submit`: turn a node into a delivery.
    fn submit(&mut self, rule: usize, i: usize) {
        let Some(RuleDecision::Action(action_name)) = self
            .graph
            .config
            .rules
            .get(rule)
            .map(|r| r.decision.clone())
        else {
            self.fail(true, None);
            return;
        };
        let Some(action) = self.graph.config.action_named(&action_name) else {
            self.fail(true, None);
            return;
        };
        let slot = self.tree.slot(i).clone();
        let local = match &action.method {
            ActionMethod::Relay(_) => {
                if let Node::Address(dest) = slot.node {
                    self.deliveries.push(Delivery {
                        action: action_name,
                        rcpt: self.rcpt.clone(),
                        dest,
                        target: Target::Relay,
                    });
                } else {
                    self.fail(true, None);
                }
                return;
            }
            ActionMethod::Local(l) => l.clone(),
        };
        let dest = match self
            .tree
            .ancestor(Some(i), |n| matches!(n, Node::Address(_)))
            .map(|a| &self.tree.slot(a).node)
        {
            Some(Node::Address(a)) => a.clone(),
            _ => self.rcpt.clone(),
        };
        let target = match &slot.node {
            Node::Username(_) => {
                let Some(user) = slot.user.clone() else {
                    self.fail(true, None);
                    return;
                };
                match local.method {
                    // OpenSMTPD queues an envelope no delivery program exists for (its
                    // delivery then crashes); refuse instead, as the method's own
                    // "nothing to deliver" case does.
                    LocalMethod::ForwardOnly => {
                        tracing::trace!(
                            target: "expand",
                            "expand: lka_submit: user {} has no mailbox on forward-only rule",
                            user.name
                        );
                        self.fail(true, Some(TEMP_EXPANSION));
                        return;
                    }
                    LocalMethod::ExpandOnly => {
                        tracing::trace!(
                            target: "expand",
                            "expand: lka_submit: user {} has no mailbox on expand-only rule",
                            user.name
                        );
                        self.fail(false, Some(PERM_EXPANSION));
                        return;
                    }
                    method => Target::Mailbox {
                        user,
                        subaddress: slot.subaddress.clone(),
                        method,
                    },
                }
            }
            Node::Filename(path) => Target::File {
                path: path.clone(),
                run_as: self.run_as(slot.parent),
            },
            Node::Filter(command) => {
                let run_as = self.run_as(slot.parent);
                if run_as == RunAs::Smtpd {
                    tracing::warn!(
                        "commands executed from aliases run with {} privileges",
                        SMTPD_USER
                    );
                }
                Target::Command {
                    command: command.clone(),
                    run_as,
                }
            }
            _ => {
                self.fail(true, None);
                return;
            }
        };
        self.deliveries.push(Delivery {
            action: action_name,
            rcpt: self.rcpt.clone(),
            dest,
            target,
        });
    }

    /// A file or command runs as the user above it if that is a real user, else as
    /// [`SMTPD_USER`].
    fn run_as(&self, parent: Option<usize>) -> RunAs {
        match parent.map(|p| self.tree.slot(p)) {
            Some(p) if p.realuser => match &p.user {
                Some(u) => RunAs::User(u.clone()),
                None => RunAs::Smtpd,
            },
            _ => RunAs::Smtpd,
        }
    }
}
