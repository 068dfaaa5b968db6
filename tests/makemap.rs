//! makemap(8) and newaliases(8) personalities of the built smtpctl (run through links named
//! `makemap` and `newaliases`): databases that smtpd's `db:` reader reads back, `-U` dumps,
//! `-t set` and `-t aliases`, OpenSMTPD's error texts, and newaliases with a configuration.
//! Where Debian's OpenSMTPD makemap (`/usr/sbin/makemap`) is installed, files are checked
//! both ways: ours dumped by it, its files dumped by ours; where a C compiler and
//! libdb-5.3 are there too, keys are looked up in our files through Berkeley DB itself.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const DEBIAN_MAKEMAP: &str = "/usr/sbin/makemap";

fn links(dir: &Path) -> (PathBuf, PathBuf) {
    let makemap = dir.join("makemap");
    let newaliases = dir.join("newaliases");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_smtpctl"), &makemap).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_smtpctl"), &newaliases).unwrap();
    (makemap, newaliases)
}

/// An aliases file holding `text` and a configuration whose `aliases` table reads it.
fn aliases_config(dir: &Path, text: &str) -> (PathBuf, PathBuf) {
    let aliases = dir.join("aliases");
    std::fs::write(&aliases, text).unwrap();
    let conf = dir.join("smtpd.conf");
    std::fs::write(
        &conf,
        format!(
            "table aliases file:{}\naction \"l\" maildir alias <aliases>\n\
             match for local action \"l\"\n",
            aliases.display()
        ),
    )
    .unwrap();
    (aliases, conf)
}

fn run(program: &Path, args: &[&str], dir: &Path) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn sorted_lines(b: &[u8]) -> Vec<String> {
    let mut v: Vec<String> = text(b).lines().map(str::to_string).collect();
    v.sort();
    v
}

const MAP: &str = "# comment\nFoo: bar\n  key2   value two\nkey3:value3\nkey4 : val # x\n\n\
                   last\tv  \nk5 ::v\nk6 \\\n cont\n   # indented comment\nUPPER Value\n";

fn map_expected() -> Vec<String> {
    let mut v: Vec<String> = [
        "foo\tbar",
        "key2\tvalue two",
        "key3\tvalue3",
        "key4\tval ",
        "last\tv  ",
        "k5\tv",
        "k6\tcont",
        "upper\tValue",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.sort();
    v
}

/// A table large enough for many buckets, with values spilling to overflow pages.
fn big_table() -> String {
    (0..3000)
        .map(|i| {
            let tail = if i % 250 == 0 {
                "x".repeat(3000 + i)
            } else {
                String::new()
            };
            format!("key{i} value{i}{tail}\n")
        })
        .collect()
}

#[test]
fn makemap_builds_what_the_db_reader_reads() {
    let dir = tempfile::tempdir().unwrap();
    let (makemap, _) = links(dir.path());
    std::fs::write(dir.path().join("map"), MAP).unwrap();
    let out = run(&makemap, &["map"], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
    let db = dir.path().join("map.db");
    let loaded = smtpd::table::db::load(db.to_str().unwrap()).unwrap();
    let got: Vec<String> = loaded
        .entries
        .iter()
        .map(|(k, v)| format!("{k}\t{v}"))
        .collect();
    assert_eq!(got, map_expected());
    let dump = run(&makemap, &["-U", "map.db"], dir.path());
    assert!(dump.status.success());
    assert_eq!(sorted_lines(&dump.stdout), map_expected());

    // -o, -t set, -d hash.
    std::fs::write(dir.path().join("set"), "a\nB\n  c  \n# x\n").unwrap();
    let out = run(
        &makemap,
        &["-d", "hash", "-t", "set", "-o", "other.db", "set"],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dump = run(&makemap, &["-U", "other.db"], dir.path());
    assert_eq!(
        sorted_lines(&dump.stdout),
        ["a\t<set>", "b\t<set>", "c  \t<set>"]
    );

    // A large table: many buckets and overflow pages.
    std::fs::write(dir.path().join("big"), big_table()).unwrap();
    assert!(run(&makemap, &["big"], dir.path()).status.success());
    let loaded = smtpd::table::db::load(dir.path().join("big.db").to_str().unwrap()).unwrap();
    assert_eq!(loaded.entries.len(), 3000);
    assert_eq!(loaded.entries["key7"], "value7");
    assert_eq!(loaded.entries["key500"].len(), "value500".len() + 3500);

    // smtpd starts with the table (its -n loads every table).
    let conf = dir.path().join("smtpd.conf");
    std::fs::write(
        &conf,
        format!(
            "table m db:{}\nlisten on 127.0.0.1 port 2599\naction \"l\" maildir\n\
             match from any for domain <m> action \"l\"\n",
            db.display()
        ),
    )
    .unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_smtpd"))
        .args(["-n", "-f"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check.stderr));
}

#[test]
fn makemap_errors_as_opensmtpd() {
    let dir = tempfile::tempdir().unwrap();
    let (makemap, _) = links(dir.path());
    let cases: &[(&str, &[&str], &str)] = &[
        ("a b\nbad\nc d\n", &["f"], "makemap: f:2: invalid entry\n"),
        (
            "Foo a\nfoo b\n",
            &["f"],
            "makemap: f:2: duplicate entry for foo\n",
        ),
        ("k7 #v\n", &["f"], "makemap: f:1: invalid entry\n"),
        (
            "root: foo\nnotaddr: a b c\n",
            &["-t", "aliases", "f"],
            "makemap: f:2: invalid entry\n",
        ),
        (
            "a b\n",
            &["-t", "foo", "f"],
            "makemap: unsupported type 'foo'\n",
        ),
        (
            "a b\n",
            &["-d", "foo", "f"],
            "makemap: unsupported DB type 'foo'\n",
        ),
        (
            "a b\n",
            &[],
            "usage: makemap [-U] [-d dbtype] [-o dbfile] [-t type] file\n",
        ),
    ];
    for (content, args, err) in cases {
        std::fs::write(dir.path().join("f"), content).unwrap();
        let out = run(&makemap, args, dir.path());
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(text(&out.stderr), *err, "{args:?}");
        assert!(!dir.path().join("f.db").exists(), "{args:?}");
    }
    let out = run(&makemap, &["-U", "f"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("makemap: dbopen: f: "));
    let out = run(&makemap, &["missing"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "makemap: missing: No such file or directory\n"
    );
}

#[test]
fn newaliases_builds_the_aliases_table_of_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let (_, newaliases) = links(dir.path());
    let (aliases, conf) = aliases_config(dir.path(), "root: foo\npostmaster: root\n");
    let out = run(&newaliases, &["-f", conf.to_str().unwrap()], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("{}: 2 aliases\n", aliases.display())
    );
    let loaded = smtpd::table::db::load(&format!("{}.db", aliases.display())).unwrap();
    assert_eq!(loaded.entries["postmaster"], "root");
    let out = run(&newaliases, &["extra"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), "usage: newaliases [-f file]\n");
}

/// Look keys up in `db` through libdb's dbopen(3), with a small C program; `None` when no
/// compiler or library is there.
fn libdb_lookups(dir: &Path, db: &Path, keys: &[String]) -> Option<Vec<String>> {
    let lib = [
        "/lib/x86_64-linux-gnu/libdb-5.3.so",
        "/usr/lib/x86_64-linux-gnu/libdb-5.3.so",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())?;
    let src = dir.join("lookup.c");
    std::fs::write(
        &src,
        r#"#include <fcntl.h>
#include <stdio.h>
#include <string.h>
typedef struct { void *data; size_t size; } DBT;
typedef struct db185 {
	int type;
	int (*close)(struct db185 *);
	int (*del)(const struct db185 *, const DBT *, unsigned);
	int (*get)(const struct db185 *, const DBT *, DBT *, unsigned);
	int (*put)(const struct db185 *, DBT *, const DBT *, unsigned);
	int (*seq)(const struct db185 *, DBT *, DBT *, unsigned);
	int (*sync)(const struct db185 *, unsigned);
	void *dbp, *dbcp;
	int (*fd)(const struct db185 *);
} DB;
DB *__db185_open(const char *, int, int, int, const void *);
int main(int argc, char **argv) {
	char line[16384];
	DB *db = argc > 1 ? __db185_open(argv[1], O_RDONLY, 0, 1, NULL) : NULL;
	if (db == NULL) return 2;
	while (fgets(line, sizeof line, stdin)) {
		DBT k, v;
		line[strcspn(line, "\n")] = '\0';
		k.data = line; k.size = strlen(line) + 1;
		if (db->get(db, &k, &v, 0) == 0)
			printf("%s\t%.*s\n", line, (int)v.size - 1, (char *)v.data);
		else
			printf("%s\t-\n", line);
	}
	return 0;
}
"#,
    )
    .unwrap();
    let exe = dir.join("lookup");
    let built = Command::new("cc")
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .arg(lib)
        .output()
        .ok()?;
    if !built.status.success() {
        return None;
    }
    use std::io::Write;
    let mut child = Command::new(&exe)
        .arg(db)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    let input = keys.join("\n") + "\n";
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().ok()?;
    let _ = writer.join();
    out.status
        .success()
        .then(|| text(&out.stdout).lines().map(str::to_string).collect())
}

#[test]
fn cross_check_with_debian_makemap() {
    if !Path::new(DEBIAN_MAKEMAP).exists() {
        common::skip(&format!(
            "{DEBIAN_MAKEMAP} is not installed: cross-check with OpenSMTPD's makemap not run"
        ));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (makemap, _) = links(dir.path());
    let debian = Path::new(DEBIAN_MAKEMAP);
    for (name, content, args) in [
        ("map", MAP.to_string(), vec![]),
        ("big", big_table(), vec![]),
        ("set", "a\nB\n  c  \n".to_string(), vec!["-t", "set"]),
        (
            "aliases",
            "root: foo, bar\nlist: :include:/etc/x, |/bin/cat, /tmp/f\nx: \"|cmd arg\"\n"
                .to_string(),
            vec!["-t", "aliases"],
        ),
    ] {
        std::fs::write(dir.path().join(name), &content).unwrap();
        let ours = format!("{name}.ours.db");
        let theirs = format!("{name}.theirs.db");
        let mut a = args.clone();
        a.extend(["-o", ours.as_str(), name]);
        assert!(run(&makemap, &a, dir.path()).status.success(), "{name}");
        let mut b = args.clone();
        b.extend(["-o", theirs.as_str(), name]);
        assert!(run(debian, &b, dir.path()).status.success(), "{name}");
        // Each dumps the other's file with the same pairs.
        let ours_by_debian = run(debian, &["-U", &ours], dir.path());
        assert!(
            ours_by_debian.status.success(),
            "{}",
            text(&ours_by_debian.stderr)
        );
        let theirs_by_us = run(&makemap, &["-U", &theirs], dir.path());
        assert!(
            theirs_by_us.status.success(),
            "{}",
            text(&theirs_by_us.stderr)
        );
        let theirs_by_debian = run(debian, &["-U", &theirs], dir.path());
        assert_eq!(
            sorted_lines(&ours_by_debian.stdout),
            sorted_lines(&theirs_by_debian.stdout),
            "{name}"
        );
        assert_eq!(
            sorted_lines(&theirs_by_us.stdout),
            sorted_lines(&theirs_by_debian.stdout),
            "{name}"
        );
        // Berkeley DB finds every key of our file (and not a missing one).
        let mut keys: Vec<String> = sorted_lines(&theirs_by_debian.stdout)
            .iter()
            .filter_map(|l| l.split_once('\t').map(|(k, _)| k.to_string()))
            .collect();
        keys.push("no-such-key".into());
        match libdb_lookups(dir.path(), &dir.path().join(&ours), &keys) {
            Some(found) => {
                let mut want: Vec<String> = sorted_lines(&theirs_by_debian.stdout);
                want.push("no-such-key\t-".into());
                let mut found = found;
                found.sort();
                want.sort();
                assert_eq!(found, want, "{name}");
            }
            None => common::skip("no C compiler or libdb-5.3: lookups through Berkeley DB not run"),
        }
    }
    // Errors are reported alike.
    std::fs::write(dir.path().join("bad"), "a b\nbad\n").unwrap();
    let ours = run(&makemap, &["bad"], dir.path());
    let theirs = run(debian, &["bad"], dir.path());
    assert_eq!(ours.status.code(), theirs.status.code());
    assert_eq!(text(&ours.stderr), text(&theirs.stderr));
}

/// The sendmail program answers to the name `newaliases` the same way (Debian links
/// `newaliases` to whatever provides `sendmail`).
#[test]
fn sendmail_called_newaliases_builds_the_aliases_database() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("newaliases");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_sendmail"), &link).unwrap();
    let (aliases, conf) = aliases_config(dir.path(), "abuse: root\n");
    let out = run(&link, &["-f", conf.to_str().unwrap()], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("{}: 1 aliases\n", aliases.display())
    );
    let loaded = smtpd::table::db::load(&format!("{}.db", aliases.display())).unwrap();
    assert_eq!(loaded.entries["abuse"], "root");
}
