//! Userbases: who the local users are, with their uid, gid and home directory.
//!
//! A local action's `userbase <table>` names a userinfo table (`user = "uid:gid:/home"`); without
//! one, users come from the system password database (OpenSMTPD's `<getpwnam>` table). Every
//! lookup goes through [`Userbase::lookup`], which lower-cases the key as OpenSMTPD's
//! `table_lookup` does, writes the `-T lookup` trace line and parses the value, so that a
//! table, the password database and a test fake behave alike.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::rules::matching::CompiledTable;
use crate::table::Service;

/// What a userbase knows of a user: the name (the lower-cased key), ids and home directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserInfo {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

impl UserInfo {
    /// Parse a userinfo value `uid:gid:directory` for user `name` (`to.c:text_to_userinfo`:
    /// decimal ids, the directory is the rest and may contain `:`).
    pub fn parse(name: &str, value: &str) -> Option<UserInfo> {
        let (uid, rest) = value.split_once(':')?;
        let (gid, home) = rest.split_once(':')?;
        let number = |s: &str| -> Option<u32> {
            if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        if home.len() >= 4096 {
            return None;
        }
        Some(UserInfo {
            name: name.to_string(),
            uid: number(uid)?,
            gid: number(gid)?,
            home: home.to_string(),
        })
    }

    /// The value text, as the password database backend produces it.
    pub fn value_text(&self) -> String {
        format!("{}:{}:{}", self.uid, self.gid, self.home)
    }
}

/// A userbase lookup that could not be answered (the RCPT is refused temporarily).
pub use crate::table::LookupError;

use crate::table::trace_answer;

/// A source of local users.
pub trait Userbase {
    /// The backend word of trace lines (`static`, `db`, `getpwnam`).
    fn backend(&self) -> &str;
    /// The table name of trace lines (`users`, `<getpwnam>`).
    fn table_name(&self) -> &str;
    /// The userinfo value (`uid:gid:home`) stored for `key` (already lower-cased).
    fn value(&self, key: &str) -> Result<Option<String>, LookupError>;

    /// Look a user up: lower-cases the key, traces the lookup, parses the value. A value that
    /// does not parse is a lookup error, as in OpenSMTPD.
    fn lookup(&self, user: &str) -> Result<Option<UserInfo>, LookupError> {
        let key = user.to_ascii_lowercase();
        let answer = self.value(&key);
        trace_answer(self.backend(), self.table_name(), "USERINFO", user, &answer);
        match answer? {
            None => Ok(None),
            Some(v) => UserInfo::parse(&key, &v)
                .map(Some)
                .ok_or_else(|| LookupError("Invalid argument".into())),
        }
    }
}

/// A userinfo table of the configuration (`table users { foo = "2000:2000:/var/empty" }`).
pub struct TableUserbase<'a> {
    pub compiled: &'a CompiledTable,
}

impl Userbase for TableUserbase<'_> {
    fn backend(&self) -> &str {
        self.compiled.backend()
    }
    fn table_name(&self) -> &str {
        &self.compiled.name
    }
    fn value(&self, key: &str) -> Result<Option<String>, LookupError> {
        Ok(self
            .compiled
            .get_untraced(Service::Userinfo, key)?
            .map(Cow::into_owned))
    }
}

/// The system password database (`<getpwnam>`), the default userbase.
pub struct SystemPasswd;

impl Userbase for SystemPasswd {
    fn backend(&self) -> &str {
        "getpwnam"
    }
    fn table_name(&self) -> &str {
        "<getpwnam>"
    }
    fn value(&self, key: &str) -> Result<Option<String>, LookupError> {
        match nix::unistd::User::from_name(key) {
            Ok(Some(pw)) => Ok(Some(format!(
                "{}:{}:{}",
                pw.uid.as_raw(),
                pw.gid.as_raw(),
                pw.dir.display()
            ))),
            Ok(None) => Ok(None),
            Err(e) => Err(LookupError(e.desc().to_string())),
        }
    }
}

/// A password database in memory, standing in for `<getpwnam>` in tests.
#[derive(Debug, Clone, Default)]
pub struct FakePasswd {
    users: BTreeMap<String, UserInfo>,
    failure: Option<String>,
}

impl FakePasswd {
    pub fn new() -> FakePasswd {
        FakePasswd::default()
    }

    /// Add a user (the name is stored lower-cased, as the system database is searched).
    pub fn with_user(mut self, name: &str, uid: u32, gid: u32, home: &str) -> FakePasswd {
        let name = name.to_ascii_lowercase();
        self.users.insert(
            name.clone(),
            UserInfo {
                name,
                uid,
                gid,
                home: home.to_string(),
            },
        );
        self
    }

    /// Every lookup fails with this error text.
    pub fn failing(mut self, strerror: &str) -> FakePasswd {
        self.failure = Some(strerror.to_string());
        self
    }
}

impl Userbase for FakePasswd {
    fn backend(&self) -> &str {
        "getpwnam"
    }
    fn table_name(&self) -> &str {
        "<getpwnam>"
    }
    fn value(&self, key: &str) -> Result<Option<String>, LookupError> {
        if let Some(e) = &self.failure {
            return Err(LookupError(e.clone()));
        }
        Ok(self.users.get(key).map(UserInfo::value_text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_values() {
        let u = UserInfo::parse("foo", "2000:2000:/var/empty").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (2000, 2000, "/var/empty"));
        assert_eq!(u.value_text(), "2000:2000:/var/empty");
        let u = UserInfo::parse("x", "1:2:/odd:path").unwrap();
        assert_eq!(u.home, "/odd:path");
        assert_eq!(UserInfo::parse("x", "1:2"), None);
        assert_eq!(UserInfo::parse("x", "a:2:/h"), None);
        assert_eq!(UserInfo::parse("x", "-1:2:/h"), None);
        assert_eq!(UserInfo::parse("x", "1::/h"), None);
        assert_eq!(UserInfo::parse("x", "4294967296:1:/h"), None);
    }

    #[test]
    fn fake_is_case_insensitive_and_can_fail() {
        let p = FakePasswd::new().with_user("Foo", 1000, 100, "/home/foo");
        let u = p.lookup("FOO").unwrap().unwrap();
        assert_eq!(u.name, "foo");
        assert_eq!(p.lookup("bar").unwrap(), None);
        let p = p.failing("Input/output error");
        assert_eq!(
            p.lookup("foo"),
            Err(LookupError("Input/output error".into()))
        );
    }

    #[test]
    fn system_database_knows_root() {
        // Every Unix system has a root account with uid 0.
        let u = SystemPasswd.lookup("ROOT").unwrap().unwrap();
        assert_eq!((u.name.as_str(), u.uid), ("root", 0));
        assert_eq!(
            SystemPasswd.lookup("no-such-user-for-smtpd-tests").unwrap(),
            None
        );
    }
}
