//! Expansion nodes and the expansion tree.
//!
//! A recipient expands into a tree of nodes: the RCPT address at the root, then usernames,
//! addresses, files, commands, includes and errors produced by aliases, virtual tables and
//! `.forward` files. This file owns what a node is, how alias/virtual/.forward values are read
//! into nodes (OpenSMTPD's `expand_line` and `text_to_expandnode`), and the tree that numbers the
//! nodes, queues them (first in, first out), discards duplicates and writes the
//! `expand_insert()` trace lines.
//!
//! Limits live here too: the depth limit is checked where a node is expanded
//! ([`EXPAND_DEPTH`]); the tree refuses to grow past [`MAX_NODES`], a bound OpenSMTPD does not
//! have (it only caps the nodes a `.forward` file may add), so that an enormous include file
//! cannot make one RCPT run forever.

use std::collections::{HashMap, VecDeque};
use std::fmt;

use super::userbase::UserInfo;

/// A node at this depth or deeper is not expanded: the RCPT fails (`524 5.2.4`).
pub const EXPAND_DEPTH: usize = 10;

/// The most nodes one RCPT may expand into (our bound; see the module documentation).
pub const MAX_NODES: usize = 100_000;

/// A `.forward` file may not bring the tree past this many nodes (OpenSMTPD's
/// `MAX_EXPAND_NODES`; it counts every node of the tree, not only the file's).
pub const MAX_FORWARD_NODES: usize = 100;

/// Longest alias value or file line, in bytes (`LINE_MAX`; longer ones are invalid).
pub const LINE_MAX: usize = 2048;

/// Longest user name, local part or domain (OpenSMTPD's buffers hold 255 bytes).
const MAX_NAME: usize = 255;

/// Longest file, command or error text (OpenSMTPD's `EXPAND_BUFFER` less the NUL).
const MAX_BUFFER: usize = 1023;

/// A mail address split at its last `@`, as OpenSMTPD's `text_to_mailaddr` splits it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mailaddr {
    pub user: String,
    pub domain: String,
}

impl Mailaddr {
    /// Split `text` at its last `@`; without one, the whole text is the user part.
    pub fn parse(text: &str) -> Mailaddr {
        match text.rfind('@') {
            Some(i) => Mailaddr {
                user: text[..i].to_string(),
                domain: text[i + 1..].to_string(),
            },
            None => Mailaddr {
                user: text.to_string(),
                domain: String::new(),
            },
        }
    }
}

impl fmt::Display for Mailaddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.user, self.domain)
    }
}

/// One destination an alias, virtual entry or `.forward` line names.
///
/// The variants are declared in OpenSMTPD's order (`enum expand_type`) and derive their
/// ordering from it: nodes parsed from one alias value are merged into the tree in this order
/// (usernames first, sorted, then files, commands, includes, addresses, errors), which decides
/// the order of the trace lines and of the deliveries.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    /// A local user (`foo`), looked up in the action's aliases and userbase.
    Username(String),
    /// A file to append to (`/var/mail/list`).
    Filename(String),
    /// A command to pipe to (`|cmd`, or `"|cmd"`), kept without the `|`.
    Filter(String),
    /// A file of more values (`:include:/path`), read when the alias is looked up.
    Include(String),
    /// A mail address, routed through the rules again.
    Address(Mailaddr),
    /// `error:NNN text`: the RCPT is refused with `NNN text`.
    Error(String),
}

impl Node {
    /// The type word of trace lines (`username`, `filter`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            Node::Username(_) => "username",
            Node::Filename(_) => "filename",
            Node::Filter(_) => "filter",
            Node::Include(_) => "include",
            Node::Address(_) => "address",
            Node::Error(_) => "error",
        }
    }

    /// The value as trace lines print it (`user@domain` for addresses).
    pub fn value_text(&self) -> String {
        match self {
            Node::Username(s)
            | Node::Filename(s)
            | Node::Filter(s)
            | Node::Include(s)
            | Node::Error(s) => s.clone(),
            Node::Address(a) => a.to_string(),
        }
    }

    /// Classify one element of a value (already split and trimmed), in OpenSMTPD's order:
    /// error, include, filter, filename, address, username. `None`: the element is invalid,
    /// and so is the whole value it came from.
    pub fn parse(element: &str) -> Option<Node> {
        parse_error(element)
            .or_else(|| parse_include(element))
            .or_else(|| parse_filter(element))
            .or_else(|| parse_filename(element))
            .or_else(|| parse_address(element))
            .or_else(|| parse_username(element))
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.as_bytes().get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix.as_bytes()) {
        // The prefix is ASCII, so the cut falls on a character boundary.
        s.get(prefix.len()..)
    } else {
        None
    }
}

fn parse_error(s: &str) -> Option<Node> {
    let rest =
        strip_prefix_ignore_case(s, ":error:").or_else(|| strip_prefix_ignore_case(s, "error:"))?;
    let b = rest.as_bytes();
    if b.len() > MAX_BUFFER || b.len() < 5 {
        return None;
    }
    let ok = (b[0] == b'4' || b[0] == b'5')
        && b[1].is_ascii_digit()
        && b[2].is_ascii_digit()
        && b[3] == b' '
        && b[4].is_ascii_alphanumeric();
    ok.then(|| Node::Error(rest.to_string()))
}

fn parse_include(s: &str) -> Option<Node> {
    let rest = strip_prefix_ignore_case(s, ":include:")
        .or_else(|| strip_prefix_ignore_case(s, "include:"))?;
    match parse_filename(rest)? {
        Node::Filename(path) => Some(Node::Include(path)),
        _ => None,
    }
}

fn parse_filter(s: &str) -> Option<Node> {
    let quoted = s.starts_with('"');
    let body = if quoted { &s[1..] } else { s };
    let command = body.strip_prefix('|')?;
    if command.len() > MAX_BUFFER {
        return None;
    }
    if quoted {
        // `"|cmd"`: the closing quote must end the element; it is removed.
        let inner = command.strip_suffix('"')?;
        return Some(Node::Filter(inner.to_string()));
    }
    Some(Node::Filter(command.to_string()))
}

fn parse_filename(s: &str) -> Option<Node> {
    (s.starts_with('/') && s.len() <= MAX_BUFFER).then(|| Node::Filename(s.to_string()))
}

fn parse_address(s: &str) -> Option<Node> {
    if s.len() < 3 {
        return None;
    }
    // The first `@` splits (a second one makes the domain invalid).
    let at = s.find('@')?;
    if at == 0 || at == s.len() - 1 {
        return None;
    }
    let (user, domain) = (&s[..at], &s[at + 1..]);
    const LOCAL_EXTRA: &[u8] = b"!#$%*/?|^{}`~&'+-=_.";
    let user_ok = user
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || LOCAL_EXTRA.contains(&c));
    let domain_ok = domain
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.');
    // OpenSMTPD silently truncates parts longer than its buffers; a truncated address would be
    // somebody else's, so such an element is refused instead.
    if !user_ok || !domain_ok || user.len() > MAX_NAME || domain.len() > MAX_NAME {
        return None;
    }
    Some(Node::Address(Mailaddr {
        user: user.to_string(),
        domain: domain.to_string(),
    }))
}

fn parse_username(s: &str) -> Option<Node> {
    let ok = !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-' | b'+'));
    ok.then(|| Node::Username(s.to_string()))
}

/// C's `isspace` in the C locale (Rust's ASCII whitespace lacks the vertical tab).
fn is_c_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn strip(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&c| !is_c_space(c)).unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&c| !is_c_space(c))
        .map_or(start, |i| i + 1);
    &s[start..end.max(start)]
}

/// The nodes one value (or one file line) names, in the order written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedLine {
    /// The elements read before the end of the line or the first invalid element.
    pub nodes: Vec<Node>,
    /// The whole line was valid. When it is not, OpenSMTPD has already used the elements
    /// before the invalid one (`.forward` and include files keep them; alias values are
    /// dropped whole).
    pub complete: bool,
}

/// Read a comma-separated value as OpenSMTPD's `expand_line` does: commas inside double or
/// single quotes, or escaped with `\`, do not split; the `\` of an escape is dropped, quotes
/// are kept; each element is trimmed and empty ones skipped. An unterminated quote or a
/// trailing `\` makes the line invalid (after the elements before it), as does a line of
/// [`LINE_MAX`] bytes or more.
pub fn parse_line(line: &str) -> ParsedLine {
    let mut out = ParsedLine::default();
    if line.len() >= LINE_MAX {
        return out;
    }
    let bytes = line.as_bytes();
    let mut pos = 0usize;
    loop {
        let mut element: Vec<u8> = Vec::new();
        let (mut esc, mut dq, mut sq) = (false, false, false);
        let mut split = false;
        while pos < bytes.len() {
            let c = bytes[pos];
            pos += 1;
            if esc {
                element.push(c);
                esc = false;
                continue;
            }
            if c == b'\\' {
                esc = true;
                continue;
            }
            if c == b',' && !dq && !sq {
                split = true;
                break;
            }
            element.push(c);
            if c == b'"' && !sq {
                dq = !dq;
            }
            if c == b'\'' && !dq {
                sq = !sq;
            }
        }
        if !split {
            if esc || dq || sq {
                return out;
            }
            if element.is_empty() {
                out.complete = true;
                return out;
            }
        }
        // Only ASCII bytes (backslashes) were dropped, so the element is still UTF-8.
        let text = String::from_utf8_lossy(strip(&element)).into_owned();
        if !text.is_empty() {
            match Node::parse(&text) {
                Some(node) => out.nodes.push(node),
                None => return out,
            }
        }
        if !split {
            out.complete = true;
            return out;
        }
    }
}

/// How a file is cut into logical lines (BSD `fparseln`): an escape character, a
/// continuation character that joins a line ending in it with the next, and a comment
/// character that ends the line. Escapes are kept in the text (for [`parse_line`] to read).
#[derive(Debug, Clone, Copy)]
pub struct LineSyntax {
    pub escape: u8,
    pub continuation: u8,
    pub comment: Option<u8>,
}

/// `.forward` files: `fparseln`'s defaults (`\` escape, `\` continuation, `#` comments).
pub const FORWARD_SYNTAX: LineSyntax = LineSyntax {
    escape: b'\\',
    continuation: b'\\',
    comment: Some(b'#'),
};

/// Include files as OpenSMTPD 6.8 reads them: its delimiter array makes `#` the
/// continuation character and leaves no comment character, so a comment line is ignored only
/// because it is not a valid value, and `alice # admin` names nobody.
pub const INCLUDE_SYNTAX: LineSyntax = LineSyntax {
    escape: b'\\',
    continuation: b'#',
    comment: None,
};

fn is_escaped(line: &[u8], at: usize, escape: u8) -> bool {
    let run = line[..at]
        .iter()
        .rev()
        .take_while(|&&c| c == escape)
        .count();
    run % 2 == 1
}

/// Cut file content into logical lines.
pub fn logical_lines(content: &[u8], syntax: LineSyntax) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    let mut raw_lines = content.split_inclusive(|&c| c == b'\n').peekable();
    while let Some(raw) = raw_lines.next() {
        let mut s: &[u8] = raw;
        if let Some(com) = syntax.comment
            && let Some(i) = (0..s.len()).find(|&i| s[i] == com && !is_escaped(s, i, syntax.escape))
        {
            s = &s[..i];
        }
        if s.last() == Some(&b'\n') {
            s = &s[..s.len() - 1];
        }
        let mut continues = false;
        if let Some(&last) = s.last()
            && last == syntax.continuation
            && !is_escaped(s, s.len() - 1, syntax.escape)
        {
            s = &s[..s.len() - 1];
            continues = true;
        }
        current.get_or_insert_with(Vec::new).extend_from_slice(s);
        if !continues || raw_lines.peek().is_none() {
            out.extend(current.take());
        }
    }
    out
}

/// A node in the tree, with what expansion learned about it.
#[derive(Debug, Clone)]
pub struct Slot {
    pub node: Node,
    pub parent: Option<usize>,
    /// The rule (index into the configuration's rules) in force when the node was inserted.
    pub rule: Option<usize>,
    pub depth: usize,
    /// A username listed in the `.forward` of the same user: delivered, not looked up again.
    pub sameuser: bool,
    /// A username found in the userbase.
    pub realuser: bool,
    /// A username whose `.forward` was read.
    pub forwarded: bool,
    /// The `+tag` cut off a username.
    pub subaddress: String,
    /// The userbase entry of a real user.
    pub user: Option<UserInfo>,
    /// The number that stands for the node's address in trace lines.
    pub ptr: u64,
}

/// Numbers standing for memory addresses in trace lines: OpenSMTPD prints pointers, which
/// differ from run to run; these are stable within an expansion and formatted the same way.
#[derive(Debug)]
pub struct Heap {
    next: u64,
}

impl Default for Heap {
    fn default() -> Heap {
        Heap { next: 0x1000 }
    }
}

impl Heap {
    /// A fresh "address".
    pub fn alloc(&mut self) -> u64 {
        let p = self.next;
        self.next += 0x60;
        p
    }
}

/// A pointer as `%p` prints it.
pub fn ptr_text(p: Option<u64>) -> String {
    match p {
        Some(p) => format!("{p:#x}"),
        None => "(nil)".to_string(),
    }
}

/// The "address" of rule number `i` (0-based) in trace lines.
pub fn rule_ptr(i: usize) -> u64 {
    0xa0000 + 0x100 * i as u64
}

/// The "address" of the dispatcher name rule number `i` refers to.
pub fn dispatcher_ptr(i: usize) -> u64 {
    0xd0000 + 0x100 * i as u64
}

/// The expansion tree of one RCPT: every node inserted, the queue of nodes still to expand,
/// and the parent and rule that new nodes get (OpenSMTPD's `struct expand`).
#[derive(Debug)]
pub struct Tree {
    pub ptr: u64,
    pub slots: Vec<Slot>,
    /// Nodes that a new node could duplicate, by value and sameuser flag.
    index: HashMap<(Node, bool), Vec<usize>>,
    queue: VecDeque<usize>,
    /// Parent of the next nodes inserted.
    pub parent: Option<usize>,
    /// Rule of the next nodes inserted.
    pub rule: Option<usize>,
    /// Nodes inserted so far.
    pub inserted: usize,
    /// An insert was refused because the tree reached [`MAX_NODES`].
    pub overflow: bool,
}

impl Tree {
    pub fn new(heap: &mut Heap) -> Tree {
        Tree {
            ptr: heap.alloc(),
            slots: Vec::new(),
            index: HashMap::new(),
            queue: VecDeque::new(),
            parent: None,
            rule: None,
            inserted: 0,
            overflow: false,
        }
    }

    pub fn slot(&self, i: usize) -> &Slot {
        &self.slots[i]
    }

    pub fn slot_mut(&mut self, i: usize) -> &mut Slot {
        &mut self.slots[i]
    }

    /// The next node to expand.
    pub fn pop(&mut self) -> Option<usize> {
        self.queue.pop_front()
    }

    /// The nearest node of the kind `want` at or above `from`.
    pub fn ancestor(&self, from: Option<usize>, want: fn(&Node) -> bool) -> Option<usize> {
        let mut cur = from;
        let mut guard = self.slots.len() + 1;
        while let Some(i) = cur {
            if want(&self.slots[i].node) {
                return Some(i);
            }
            cur = self.slots[i].parent;
            guard -= 1;
            if guard == 0 {
                return None;
            }
        }
        None
    }

    /// Is a new node (with `parent`) the same as the existing node `old`? Same value and
    /// flags (the caller's index guarantees that) and either the same parent, or the same
    /// nearest address above both parents and, for files and commands, the same nearest
    /// username: one RCPT never delivers twice to one destination, but two addresses of the
    /// tree each get their own delivery.
    fn same_place(&self, old: usize, node: &Node, parent: Option<usize>) -> bool {
        let old_parent = self.slots[old].parent;
        if old_parent == parent {
            return true;
        }
        if old_parent.is_none() || parent.is_none() {
            return false;
        }
        let is_address = |n: &Node| matches!(n, Node::Address(_));
        if self.ancestor(old_parent, is_address) != self.ancestor(parent, is_address) {
            return false;
        }
        if !matches!(node, Node::Filename(_) | Node::Filter(_)) {
            return true;
        }
        let is_user = |n: &Node| matches!(n, Node::Username(_));
        self.ancestor(old_parent, is_user) == self.ancestor(parent, is_user)
    }

    /// The prefix of the `expand_insert()` trace line: `TYPE:VALUE[parent=..., rule=...]`.
    fn describe(&self, node: &Node) -> String {
        let parent = self.parent.map(|p| self.slots[p].ptr);
        let mut s = format!(
            "{}:{}[parent={}, rule={}",
            node.type_name(),
            node.value_text(),
            ptr_text(parent),
            ptr_text(self.rule.map(rule_ptr))
        );
        if let Some(r) = self.rule {
            s += &format!(", dispatcher={}", ptr_text(Some(dispatcher_ptr(r))));
        }
        s.push(']');
        s
    }

    /// Insert a node under the current parent and rule (OpenSMTPD's `expand_insert`), unless
    /// it duplicates one already there. Returns the new node's index.
    pub fn insert(&mut self, heap: &mut Heap, node: Node) -> Option<usize> {
        let me = ptr_text(Some(self.ptr));
        tracing::trace!(
            target: "expand",
            "expand: {}: expand_insert() called for {}",
            me,
            self.describe(&node)
        );
        let mut sameuser = false;
        if let (Node::Username(name), Some(p)) = (&node, self.parent)
            && let Node::Username(parent_name) = &self.slots[p].node
            && parent_name == name
        {
            tracing::trace!(target: "expand", "expand: {}: setting sameuser = 1", me);
            sameuser = true;
        }
        let key = (node, sameuser);
        if let Some(candidates) = self.index.get(&key)
            && candidates
                .iter()
                .any(|&old| self.same_place(old, &key.0, self.parent))
        {
            tracing::trace!(target: "expand", "expand: {}: node found, discarding", me);
            return None;
        }
        if self.slots.len() >= MAX_NODES {
            self.overflow = true;
            return None;
        }
        let depth = self.parent.map_or(0, |p| self.slots[p].depth + 1);
        let ptr = heap.alloc();
        let i = self.slots.len();
        self.slots.push(Slot {
            node: key.0.clone(),
            parent: self.parent,
            rule: self.rule,
            depth,
            sameuser,
            realuser: false,
            forwarded: false,
            subaddress: String::new(),
            user: None,
            ptr,
        });
        self.index.entry(key).or_default().push(i);
        self.queue.push_back(i);
        self.inserted += 1;
        tracing::trace!(
            target: "expand",
            "expand: {}: inserted node {}",
            me,
            ptr_text(Some(ptr))
        );
        Some(i)
    }

    /// A username found in the userbase has its tag cut and is flagged real: from then on no
    /// new node can equal it (OpenSMTPD compares the flag and the whole buffer, tag included).
    pub fn make_real(&mut self, i: usize, user: UserInfo) {
        let key = (self.slots[i].node.clone(), self.slots[i].sameuser);
        if let Some(v) = self.index.get_mut(&key) {
            v.retain(|&j| j != i);
        }
        let slot = &mut self.slots[i];
        slot.realuser = true;
        slot.user = Some(user);
    }

    /// Log the end of the tree (`expand_clear`).
    pub fn trace_clear(&self) {
        tracing::trace!(
            target: "expand",
            "expand: {}: clearing expand tree",
            ptr_text(Some(self.ptr))
        );
    }
}

/// The short-lived tree OpenSMTPD builds while reading one alias or virtual value: its nodes
/// have no parent and no rule, duplicates inside the value are dropped, and it hands its
/// nodes to the real tree in [`Node`] order.
#[derive(Debug)]
pub struct ValueTree {
    ptr: u64,
    nodes: std::collections::BTreeSet<Node>,
}

impl ValueTree {
    pub fn new(heap: &mut Heap) -> ValueTree {
        ValueTree {
            ptr: heap.alloc(),
            nodes: Default::default(),
        }
    }

    pub fn insert(&mut self, heap: &mut Heap, node: Node) {
        let me = ptr_text(Some(self.ptr));
        tracing::trace!(
            target: "expand",
            "expand: {}: expand_insert() called for {}:{}[parent=(nil), rule=(nil)]",
            me,
            node.type_name(),
            node.value_text()
        );
        if self.nodes.contains(&node) {
            tracing::trace!(target: "expand", "expand: {}: node found, discarding", me);
            return;
        }
        self.nodes.insert(node);
        tracing::trace!(
            target: "expand",
            "expand: {}: inserted node {}",
            me,
            ptr_text(Some(heap.alloc()))
        );
    }

    /// The nodes in merge order.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter()
    }

    /// Log the end of the tree (`expand_free`).
    pub fn trace_free(&self) {
        let me = ptr_text(Some(self.ptr));
        tracing::trace!(target: "expand", "expand: {}: clearing expand tree", me);
        tracing::trace!(target: "expand", "expand: {}: freeing expand tree", me);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> Node {
        Node::Username(s.into())
    }

    fn addr(u: &str, d: &str) -> Node {
        Node::Address(Mailaddr {
            user: u.into(),
            domain: d.into(),
        })
    }

    #[test]
    fn classification_order_and_shapes() {
        assert_eq!(Node::parse("root"), Some(user("root")));
        assert_eq!(Node::parse("foo+tag"), Some(user("foo+tag")));
        assert_eq!(
            Node::parse("bob@example.org"),
            Some(addr("bob", "example.org"))
        );
        assert_eq!(
            Node::parse("/var/mail/list"),
            Some(Node::Filename("/var/mail/list".into()))
        );
        assert_eq!(
            Node::parse("|/bin/cat > /dev/null"),
            Some(Node::Filter("/bin/cat > /dev/null".into()))
        );
        assert_eq!(
            Node::parse("\"|/usr/bin/vacation -a x\""),
            Some(Node::Filter("/usr/bin/vacation -a x".into()))
        );
        assert_eq!(Node::parse("\"|unterminated"), None);
        assert_eq!(
            Node::parse(":include:/etc/mail/list"),
            Some(Node::Include("/etc/mail/list".into()))
        );
        assert_eq!(
            Node::parse("INCLUDE:/etc/mail/list"),
            Some(Node::Include("/etc/mail/list".into()))
        );
        assert_eq!(Node::parse(":include: /etc/mail/list"), None);
        assert_eq!(
            Node::parse("error:550 go away"),
            Some(Node::Error("550 go away".into()))
        );
        assert_eq!(
            Node::parse(":ERROR:421 later"),
            Some(Node::Error("421 later".into()))
        );
        // [45][0-9][0-9] then a space and an alphanumeric character.
        assert_eq!(Node::parse("error:250 fine"), None);
        assert_eq!(Node::parse("error:550  two spaces"), None);
        assert_eq!(Node::parse("error:550"), None);
        // `error:` wins over the address shape, `/` over everything after it.
        assert_eq!(Node::parse("/a@b.c"), Some(Node::Filename("/a@b.c".into())));
        assert_eq!(Node::parse("@example.org"), None);
        assert_eq!(Node::parse("foo@"), None);
        assert_eq!(Node::parse("a@b@c"), None);
        assert_eq!(Node::parse("a b"), None);
        assert_eq!(
            Node::parse("o'neil&co@example.org"),
            Some(addr("o'neil&co", "example.org"))
        );
        assert_eq!(Node::parse("x@exa_mple.org"), None);
        assert_eq!(Node::parse(&"u".repeat(256)), None);
        assert!(Node::parse(&"u".repeat(255)).is_some());
    }

    #[test]
    fn value_lists_split_on_unquoted_commas() {
        let p = parse_line(" foo , bar@example.org,,\"|cmd a, b\" , /var/mail/x");
        assert!(p.complete);
        assert_eq!(
            p.nodes,
            vec![
                user("foo"),
                addr("bar", "example.org"),
                Node::Filter("cmd a, b".into()),
                Node::Filename("/var/mail/x".into()),
            ]
        );
        // Single quotes protect a comma but stay in the element, which is then invalid.
        let p = parse_line("foo, '/x, y'");
        assert_eq!(p.nodes, vec![user("foo")]);
        assert!(!p.complete);
        // Escaped comma: one element, backslash dropped.
        let p = parse_line("|echo a\\,b");
        assert_eq!(p.nodes, vec![Node::Filter("echo a,b".into())]);
        assert!(p.complete);
        // Trailing backslash or open quote: invalid, after the elements before it.
        let p = parse_line("foo, bar\\");
        assert_eq!(p.nodes, vec![user("foo")]);
        assert!(!p.complete);
        let p = parse_line("foo, \"|cmd");
        assert_eq!(p.nodes, vec![user("foo")]);
        assert!(!p.complete);
        // An invalid element stops the line.
        let p = parse_line("foo, b@d@x, bar");
        assert_eq!(p.nodes, vec![user("foo")]);
        assert!(!p.complete);
        assert!(parse_line("").complete);
        assert!(parse_line("   ").complete);
        assert!(!parse_line(&"a".repeat(LINE_MAX)).complete);
    }

    #[test]
    fn forward_lines_comments_and_continuations() {
        let text = b"# my forward\nfoo, \\\n  bar # colleague\n\n|grep x\\#y\nlast";
        let lines: Vec<String> = logical_lines(text, FORWARD_SYNTAX)
            .into_iter()
            .map(|l| String::from_utf8(l).unwrap())
            .collect();
        assert_eq!(lines, vec!["", "foo,   bar ", "", "|grep x\\#y", "last"]);
        let p = parse_line(&lines[3]);
        assert_eq!(p.nodes, vec![Node::Filter("grep x#y".into())]);
    }

    #[test]
    fn include_lines_use_hash_as_continuation() {
        let text = b"# members\nalice # admin\nbob, #\ncarol\n";
        let lines: Vec<String> = logical_lines(text, INCLUDE_SYNTAX)
            .into_iter()
            .map(|l| String::from_utf8(l).unwrap())
            .collect();
        assert_eq!(lines, vec!["# members", "alice # admin", "bob, carol"]);
        assert!(parse_line(&lines[0]).nodes.is_empty());
        assert!(parse_line(&lines[1]).nodes.is_empty());
        assert_eq!(
            parse_line(&lines[2]).nodes,
            vec![user("bob"), user("carol")]
        );
    }

    #[test]
    fn merge_order_follows_opensmtpd_types() {
        let mut v = [
            Node::Error("550 no".into()),
            addr("a", "b.c"),
            Node::Include("/i".into()),
            Node::Filter("cmd".into()),
            Node::Filename("/f".into()),
            user("zed"),
            user("amy"),
        ];
        v.sort();
        assert_eq!(v[0], user("amy"));
        assert_eq!(v[1], user("zed"));
        assert_eq!(v[2], Node::Filename("/f".into()));
        assert_eq!(v[6], Node::Error("550 no".into()));
    }

    #[test]
    fn duplicates_are_discarded_per_address_context() {
        let mut heap = Heap::default();
        let mut t = Tree::new(&mut heap);
        let root = t.insert(&mut heap, addr("list", "example.org")).unwrap();
        t.parent = Some(root);
        t.rule = Some(0);
        let a = t.insert(&mut heap, user("a")).unwrap();
        let b = t.insert(&mut heap, user("b")).unwrap();
        assert!(t.insert(&mut heap, user("a")).is_none(), "same parent");
        t.parent = Some(b);
        assert!(
            t.insert(&mut heap, user("a")).is_none(),
            "same address above: one delivery per RCPT"
        );
        // Once `a` is a real user it no longer matches (OpenSMTPD compares the flag).
        t.make_real(
            a,
            UserInfo {
                name: "a".into(),
                uid: 1,
                gid: 1,
                home: "/".into(),
            },
        );
        assert!(t.insert(&mut heap, user("a")).is_some());
        // Under a different address, the same user is a new node.
        t.parent = Some(b);
        let other = t.insert(&mut heap, addr("other", "example.org")).unwrap();
        t.parent = Some(other);
        assert!(t.insert(&mut heap, user("b")).is_some());
        assert_eq!(t.slot(other).depth, 2);
    }

    #[test]
    fn sameuser_and_files_per_user() {
        let mut heap = Heap::default();
        let mut t = Tree::new(&mut heap);
        let root = t.insert(&mut heap, addr("x", "example.org")).unwrap();
        t.parent = Some(root);
        t.rule = Some(0);
        let foo = t.insert(&mut heap, user("foo")).unwrap();
        let bar = t.insert(&mut heap, user("bar")).unwrap();
        t.parent = Some(foo);
        let same = t.insert(&mut heap, user("foo")).unwrap();
        assert!(t.slot(same).sameuser);
        assert!(t.insert(&mut heap, Node::Filename("/f".into())).is_some());
        t.parent = Some(bar);
        assert!(
            t.insert(&mut heap, Node::Filename("/f".into())).is_some(),
            "a file is per user"
        );
    }

    #[test]
    fn pointers_print_like_percent_p() {
        assert_eq!(ptr_text(None), "(nil)");
        assert_eq!(ptr_text(Some(0x1060)), "0x1060");
    }
}
