//! makemap(8) and newaliases(8): build the Berkeley DB hash file a `db:` table reads from a
//! text table, as OpenSMTPD 6.8's `makemap.c` does (smtpctl run under either name).
//!
//! * Lines are read as `fparseln(3)` reads them with `FPARSELN_UNESCCOMM`: `#` starts a
//!   comment (`\#` is a plain `#`), a `\` at the end of a line continues it, blank lines
//!   are skipped, other backslashes are kept.
//! * Map entries: leading blanks skipped; the key runs to the first space, tab or `:`;
//!   then spaces, tabs and colons are skipped; the rest of the line is the value (trailing
//!   blanks kept). The key is lower-cased. No value: `FILE:LINE: invalid entry`.
//! * `-t set`: the whole line (after leading blanks) is the key, the value is `<set>`.
//! * `-t aliases` (and newaliases): as a map, and every comma-separated element of the
//!   value must be a valid expansion value (smtpd.conf.md §6.5), else `invalid entry`.
//! * A key twice: `FILE:LINE: duplicate entry for KEY`. The first bad line stops makemap
//!   with status 1 and no database is written.
//! * Keys and values are stored with their terminating NUL. The database is written to a
//!   temporary file beside the target and renamed over it.
//! * `-U` prints a database's pairs as `key<TAB>value`.
//! * newaliases builds the database of the file behind the table named `aliases` in the
//!   configuration (its path without `.db`), or of `/etc/aliases`, and prints
//!   `FILE: N aliases`.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;

use crate::config::model::TableBackend;
use crate::expand::node::Node;

/// The usage line of makemap.
pub const USAGE: &str = "usage: makemap [-U] [-d dbtype] [-o dbfile] [-t type] file";

/// The usage line of newaliases.
pub const NEWALIASES_USAGE: &str = "usage: newaliases [-f file]";

/// The aliases file newaliases builds when the configuration has no `aliases` table
/// (Debian's; OpenBSD uses `/etc/mail/aliases`).
pub const DEFAULT_ALIASES: &str = "/etc/aliases";

/// What a source file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapType {
    /// `key value` lines.
    Map,
    /// One key per line.
    Set,
    /// `name: values` lines, checked as aliases.
    Aliases,
}

/// One logical line and the number of the last physical line it took.
pub type Line = (usize, Vec<u8>);

fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

/// Whether the byte at `i` is preceded by an odd number of backslashes.
fn escaped(line: &[u8], i: usize) -> bool {
    line[..i].iter().rev().take_while(|b| **b == b'\\').count() % 2 == 1
}

/// The logical lines of `content`, as `fparseln(3)` with `FPARSELN_UNESCCOMM` gives them.
pub fn logical_lines(content: &[u8]) -> Vec<Line> {
    let mut out = Vec::new();
    let mut lineno = 0usize;
    let mut physical = content.split_inclusive(|b| *b == b'\n').peekable();
    while physical.peek().is_some() {
        let mut buf: Option<Vec<u8>> = None;
        for raw in physical.by_ref() {
            lineno += 1;
            let mut line = raw.strip_suffix(b"\n").unwrap_or(raw);
            let mut more = false;
            if let Some(i) = (0..line.len()).find(|&i| line[i] == b'#' && !escaped(line, i)) {
                line = &line[..i];
                more = line.is_empty() && buf.is_none();
            }
            if let Some(&last) = line.last()
                && last == b'\\'
                && !escaped(line, line.len() - 1)
            {
                line = &line[..line.len() - 1];
                more = true;
            }
            buf.get_or_insert_with(Vec::new).extend_from_slice(line);
            if !more {
                break;
            }
        }
        let Some(buf) = buf else { break };
        // `\#` loses its backslash; every other escape stays as written.
        let mut text = Vec::with_capacity(buf.len());
        let mut i = 0;
        while i < buf.len() {
            if buf[i] == b'\\' && i + 1 < buf.len() {
                if buf[i + 1] != b'#' {
                    text.push(b'\\');
                }
                text.push(buf[i + 1]);
                i += 2;
            } else {
                text.push(buf[i]);
                i += 1;
            }
        }
        // A C string ends at its first NUL.
        if let Some(nul) = text.iter().position(|b| *b == 0) {
            text.truncate(nul);
        }
        out.push((lineno, text));
    }
    out
}

/// Whether an aliases value is acceptable (`make_aliases`): every comma-separated element,
/// trimmed, is a non-empty valid expansion value.
fn valid_aliases(value: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(value) else {
        return false;
    };
    text.split(',').all(|element| {
        let e = element.trim_matches(|c: char| c.is_ascii() && is_c_space(c as u8));
        !e.is_empty() && Node::parse(e).is_some()
    })
}

/// The pairs to store for the text of a source file (keys and values with their NUL), or
/// the message of the first bad line (`SOURCE:LINE: ...`).
pub fn entries(
    source: &str,
    content: &[u8],
    t: MapType,
) -> Result<Vec<crate::table::db::Pair>, String> {
    let mut out: Vec<crate::table::db::Pair> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (lineno, line) in logical_lines(content) {
        let start = line
            .iter()
            .position(|b| !is_c_space(*b))
            .unwrap_or(line.len());
        let rest = &line[start..];
        if rest.is_empty() {
            continue;
        }
        let (key, value) = match t {
            MapType::Set => (rest.to_vec(), b"<set>".to_vec()),
            MapType::Map | MapType::Aliases => {
                let Some(sep) = rest.iter().position(|b| matches!(b, b' ' | b'\t' | b':')) else {
                    return Err(format!("{source}:{lineno}: invalid entry"));
                };
                let value = &rest[sep + 1..];
                let skip = value
                    .iter()
                    .position(|b| *b != b':' && !is_c_space(*b))
                    .unwrap_or(value.len());
                let value = &value[skip..];
                if value.is_empty() || (t == MapType::Aliases && !valid_aliases(value)) {
                    return Err(format!("{source}:{lineno}: invalid entry"));
                }
                (rest[..sep].to_vec(), value.to_vec())
            }
        };
        let key = key.to_ascii_lowercase();
        if !seen.insert(key.clone()) {
            return Err(format!(
                "{source}:{lineno}: duplicate entry for {}",
                String::from_utf8_lossy(&key)
            ));
        }
        let mut k = key;
        k.push(0);
        let mut v = value;
        v.push(0);
        out.push((k, v));
    }
    Ok(out)
}

use crate::log::strerror;

/// Build `db` from the text file `source`; returns the number of entries.
pub fn make(source: &str, db: &str, t: MapType) -> Result<usize, String> {
    let content = std::fs::read(source).map_err(|e| format!("{source}: {}", strerror(&e)))?;
    let pairs = entries(source, &content, t)?;
    let mut uid = [0u8; 20];
    let _ = getrandom::fill(&mut uid);
    let data = crate::table::db::build(&pairs, uid).map_err(|e| format!("{db}: {e}"))?;
    // A temporary file beside the target, renamed over it once complete.
    let mut suffix = [0u8; 8];
    let _ = getrandom::fill(&mut suffix);
    let tmp = format!(
        "{db}.{}",
        suffix
            .iter()
            .map(|b| char::from(
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                    [(*b % 62) as usize]
            ))
            .collect::<String>()
    );
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("{tmp}: {}", strerror(&e)));
    }
    if let Err(e) = std::fs::rename(&tmp, db) {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("rename {tmp} to {db}: {}", strerror(&e)));
    }
    Ok(pairs.len())
}

/// `makemap -U`: the pairs of a database as `key<TAB>value` lines.
pub fn dump(db: &str) -> Result<Vec<u8>, String> {
    let data = std::fs::read(db).map_err(|e| format!("dbopen: {db}: {}", strerror(&e)))?;
    let pairs = crate::table::db::pairs(&data).map_err(|e| format!("dbopen: {db}: {e}"))?;
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.strip_suffix(&[0]).unwrap_or(&k));
        out.push(b'\t');
        out.extend_from_slice(v.strip_suffix(&[0]).unwrap_or(&v));
        out.push(b'\n');
    }
    Ok(out)
}

/// Run as `makemap` with `args` (without the program name); returns the exit status.
pub fn makemap_main(program: &str, args: &[OsString]) -> i32 {
    let usage = || {
        eprintln!("{USAGE}");
        1
    };
    let mut dump_mode = false;
    let mut output: Option<String> = None;
    let mut t = MapType::Map;
    let mut files = Vec::new();
    let mut i = 0;
    let mut options_done = false;
    while i < args.len() {
        let a = args[i].as_bytes();
        i += 1;
        if options_done || a.len() < 2 || a[0] != b'-' {
            files.push(String::from_utf8_lossy(a).into_owned());
            continue;
        }
        if a == b"--" {
            options_done = true;
            continue;
        }
        // Clustered single-letter options, as getopt(3): `-Ut set`, `-tset`.
        let mut j = 1;
        while j < a.len() {
            let c = a[j];
            j += 1;
            match c {
                b'U' => dump_mode = true,
                b'd' | b'o' | b't' => {
                    let value = if j < a.len() {
                        let v = String::from_utf8_lossy(&a[j..]).into_owned();
                        j = a.len();
                        v
                    } else if i < args.len() {
                        i += 1;
                        String::from_utf8_lossy(args[i - 1].as_bytes()).into_owned()
                    } else {
                        eprintln!("{program}: option requires an argument -- '{}'", c as char);
                        return usage();
                    };
                    match c {
                        b'd' if value == "hash" => {}
                        b'd' if value == "btree" => {
                            eprintln!("makemap: B-tree databases are not supported; use -d hash");
                            return 1;
                        }
                        b'd' => {
                            eprintln!("makemap: unsupported DB type '{value}'");
                            return 1;
                        }
                        b'o' => output = Some(value),
                        _ => {
                            t = match value.as_str() {
                                "aliases" => MapType::Aliases,
                                "set" => MapType::Set,
                                _ => {
                                    eprintln!("makemap: unsupported type '{value}'");
                                    return 1;
                                }
                            }
                        }
                    }
                }
                _ => {
                    eprintln!(
                        "{program}: invalid option -- '{}'",
                        String::from_utf8_lossy(&[c])
                    );
                    return usage();
                }
            }
        }
    }
    let [source] = files.as_slice() else {
        return usage();
    };
    if dump_mode {
        return match dump(source) {
            Ok(text) => {
                let mut out = std::io::stdout().lock();
                if out.write_all(&text).and_then(|_| out.flush()).is_err() {
                    return 1;
                }
                0
            }
            Err(e) => {
                eprintln!("makemap: {e}");
                1
            }
        };
    }
    let db = output.unwrap_or_else(|| format!("{source}.db"));
    match make(source, &db, t) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("makemap: {e}");
            1
        }
    }
}

/// The aliases file behind the configuration's `aliases` table (`conf_aliases`).
pub fn aliases_source(config: &str) -> Result<String, String> {
    let options = crate::config::parse::Options {
        defines: Vec::new(),
        hostname: None,
    };
    let checked = crate::config::check(config, &options, &crate::config::system::RealSystem);
    let Some(cfg) = checked.config else {
        let report = checked
            .diagnostics
            .render(false, &|f| std::fs::read_to_string(f).ok());
        return Err(report.trim_end().to_string());
    };
    let Some(table) = cfg.tables.iter().find(|t| t.name == "aliases") else {
        return Ok(DEFAULT_ALIASES.to_string());
    };
    let path = match &table.backend {
        TableBackend::File { path, .. } | TableBackend::Db { path } => path.clone(),
        _ => return Err("newaliases: the aliases table is not a file".into()),
    };
    Ok(path.strip_suffix(".db").map(str::to_string).unwrap_or(path))
}

/// Run as `newaliases` with `args` (without the program name); returns the exit status.
pub fn newaliases_main(program: &str, args: &[OsString]) -> i32 {
    let usage = || {
        eprintln!("{NEWALIASES_USAGE}");
        1
    };
    let mut config = "/etc/smtpd.conf".to_string();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_bytes();
        i += 1;
        match a {
            b"-f" => match args.get(i) {
                Some(v) => {
                    config = String::from_utf8_lossy(v.as_bytes()).into_owned();
                    i += 1;
                }
                None => {
                    eprintln!("{program}: option requires an argument -- 'f'");
                    return usage();
                }
            },
            _ if a.starts_with(b"-f") => config = String::from_utf8_lossy(&a[2..]).into_owned(),
            _ if a.len() >= 2 && a[0] == b'-' => {
                eprintln!(
                    "{program}: invalid option -- '{}'",
                    String::from_utf8_lossy(&a[1..2])
                );
                return usage();
            }
            _ => return usage(),
        }
    }
    let source = match aliases_source(&config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    match make(&source, &format!("{source}.db"), MapType::Aliases) {
        Ok(n) => {
            println!("{source}: {n} aliases");
            0
        }
        Err(e) => {
            eprintln!("newaliases: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<(usize, String)> {
        logical_lines(text.as_bytes())
            .into_iter()
            .map(|(n, l)| (n, String::from_utf8(l).unwrap()))
            .collect()
    }

    #[test]
    fn fparseln_comments_continuations_and_escapes() {
        assert_eq!(
            lines("a b # c\n# only\n  # indented\nk \\\n cont\nx y\\\\\\#z\nk v\\\\\nt u\\"),
            vec![
                (1, "a b ".into()),
                (3, "  ".into()),
                (5, "k  cont".into()),
                (6, "x y\\\\#z".into()),
                (7, "k v\\\\".into()),
                (8, "t u".into()),
            ]
        );
        assert_eq!(lines("\n\n"), vec![(1, "".into()), (2, "".into())]);
        assert_eq!(lines("a\r\n"), vec![(1, "a\r".into())]);
    }

    fn pairs(text: &str, t: MapType) -> Result<Vec<(String, String)>, String> {
        entries("f", text.as_bytes(), t).map(|v| {
            v.into_iter()
                .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
                .collect()
        })
    }

    #[test]
    fn map_entries_as_opensmtpd_makemap() {
        let got = pairs(
            "# c\nFoo: bar\n  key2   value two\nkey3:value3\nkey4 : val # x\n\nlast\tv  \nk5 ::v\nk9: :v9\n:foo bar\n",
            MapType::Map,
        )
        .unwrap();
        let want = [
            ("foo", "bar"),
            ("key2", "value two"),
            ("key3", "value3"),
            ("key4", "val "),
            ("last", "v  "),
            ("k5", "v"),
            ("k9", "v9"),
            ("", "foo bar"),
        ];
        assert_eq!(got.len(), want.len());
        for ((k, v), (wk, wv)) in got.iter().zip(want) {
            assert_eq!(k, &format!("{wk}\0"));
            assert_eq!(v, &format!("{wv}\0"));
        }
        assert_eq!(
            pairs("a b\nbad\nc d\n", MapType::Map),
            Err("f:2: invalid entry".into())
        );
        assert_eq!(
            pairs("k7 #v\n", MapType::Map),
            Err("f:1: invalid entry".into())
        );
        assert_eq!(
            pairs("Foo a\nfoo b\n", MapType::Map),
            Err("f:2: duplicate entry for foo".into())
        );
    }

    #[test]
    fn set_and_aliases_entries() {
        let got = pairs("a\nB\n  c  \n# x\n", MapType::Set).unwrap();
        let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a\0", "b\0", "c  \0"]);
        assert!(got.iter().all(|(_, v)| v == "<set>\0"));
        assert!(
            pairs(
                "root: foo, bar\npostmaster: root\nlist: :include:/etc/x, |/bin/cat, /tmp/f\nerr: error:550 go away\nx: \"|cmd arg\"\n",
                MapType::Aliases
            )
            .is_ok()
        );
        assert_eq!(
            pairs("root: foo\nnotaddr: a b c\n", MapType::Aliases),
            Err("f:2: invalid entry".into())
        );
        assert_eq!(
            pairs("root: foo,\n", MapType::Aliases),
            Err("f:1: invalid entry".into())
        );
        assert_eq!(
            pairs("esc: a\\#b\n", MapType::Aliases),
            Err("f:1: invalid entry".into())
        );
    }
}
