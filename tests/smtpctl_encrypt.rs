//! `smtpctl encrypt` as a user runs it: the printed hashes have OpenSMTPD's shape on glibc
//! (`$6$` + 16 salt characters + 86 digest characters) and verify as credentials-table
//! entries; other commands are still refused.

mod common;

use std::process::{Command, Output};

use smtpd::table::credentials::{AuthCheck, authenticate, verify_password};

fn smtpctl(args: &[&str], stdin: Option<&[u8]>) -> Output {
    common::run_with_input(
        Command::new(env!("CARGO_BIN_EXE_smtpctl")).args(args),
        stdin.unwrap_or_default(),
    )
}

/// `$6$` + 16 characters of `./0-9A-Za-z` + `$` + 86 of them.
fn assert_glibc_shape(hash: &str) {
    let alphabet = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '/';
    let rest = hash.strip_prefix("$6$").unwrap_or_else(|| panic!("{hash}"));
    let (salt, digest) = rest.split_once('$').unwrap_or_else(|| panic!("{hash}"));
    assert_eq!(salt.len(), 16, "{hash}");
    assert_eq!(digest.len(), 86, "{hash}");
    assert!(salt.chars().chain(digest.chars()).all(alphabet), "{hash}");
}

#[test]
fn encrypt_argument() {
    let out = smtpctl(&["encrypt", "correct horse"], None);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stderr.is_empty());
    let text = String::from_utf8(out.stdout).unwrap();
    let hash = text.strip_suffix('\n').unwrap();
    assert!(!hash.contains('\n'));
    assert_glibc_shape(hash);
    assert_eq!(verify_password(b"correct horse", hash), Ok(true));
    assert_eq!(verify_password(b"correct horse\n", hash), Ok(false));

    // The line goes into a credentials table and the listener check accepts it.
    let table = |key: &str| Ok((key == "alice").then(|| hash.to_string()));
    assert_eq!(
        authenticate(b"alice", b"correct horse", table),
        AuthCheck::Ok
    );
    assert_eq!(
        authenticate(b"alice", b"Correct horse", table),
        AuthCheck::PermFail
    );
    println!("alice {hash}");
}

#[test]
fn each_run_draws_a_new_salt() {
    let a = smtpctl(&["encrypt", "same"], None).stdout;
    let b = smtpctl(&["encrypt", "same"], None).stdout;
    assert_ne!(a, b);
}

#[test]
fn encrypt_stdin_one_hash_per_line() {
    let out = smtpctl(
        &["encrypt"],
        Some(b"first\nsecond password\n\nlast-without-newline"),
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let hashes: Vec<&str> = text.lines().collect();
    assert_eq!(hashes.len(), 4, "{text}");
    let passwords: [&[u8]; 4] = [b"first", b"second password", b"", b"last-without-newline"];
    for (hash, password) in hashes.iter().zip(passwords) {
        assert_glibc_shape(hash);
        assert_eq!(verify_password(password, hash), Ok(true), "{hash}");
    }
}

#[test]
fn encrypt_accepts_an_abbreviation_and_empty_stdin() {
    let out = smtpctl(&["enc", "pw"], None);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(verify_password(b"pw", text.trim_end()), Ok(true));

    let out = smtpctl(&["encrypt"], Some(b""));
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
}

#[test]
fn encrypt_takes_at_most_one_argument() {
    let out = smtpctl(&["encrypt", "a", "b"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "usage: smtpctl encrypt [string]\n"
    );
}

#[test]
fn unknown_commands_list_the_possibilities() {
    let out = smtpctl(&["frobnicate"], None);
    assert_eq!(out.status.code(), Some(255));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("possibilities are:\n")
            && err.contains("\nencrypt\n")
            && err.contains("\nshow\n"),
        "{err}"
    );
    // No command at all: the same list, as OpenSMTPD's smtpctl gives it.
    let out = smtpctl(&[], None);
    assert_eq!(out.status.code(), Some(255));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "possibilities are:\ndiscover\npause\nresume\nshow\nlog\nmonitor\nprofile\n\
         remove\nschedule\ntrace\nunprofile\nuntrace\nupdate\nencrypt\nspf\n"
    );
}
