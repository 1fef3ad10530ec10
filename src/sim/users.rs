//! The simulator's user directory: parsing the users file (one user per
//! line, `LOGIN PASSWORD SIP-URI [OPTION...]`) into [`UserEntry`] records,
//! and matching the login forms a client may type (`DOMAIN\user`,
//! `user@domain`) against them.
//!
//! Passwords are kept only to verify sign-ins; they are never logged or
//! printed (a [`UserEntry`]'s `Debug` hides it).

use std::collections::HashMap;
use std::fmt;

/// One user of the simulated OCS.
#[derive(Clone)]
pub struct UserEntry {
    /// NetBIOS domain, as written in the file (`CONTOSO`).
    pub domain: String,
    /// Account name, as written in the file (`alice`).
    pub account: String,
    /// The password forms and NTLM sign-ins are checked against.
    pub password: String,
    /// The user's SIP URI (`sip:alice@contoso.com`).
    pub sip_uri: String,
    /// Display name (`name=` option, underscores read as spaces; default:
    /// the account name).
    pub display_name: String,
    /// Whether Integrated Windows Authentication works for this user
    /// (`iwa=no` makes IWA refuse even the right password, as for an
    /// account outside the server's domain).
    pub iwa: bool,
    /// Whether the user is enabled for Communications Server (`enabled=no`:
    /// the credentials are right but sign-in is refused).
    pub enabled: bool,
    /// Initial contacts (`contacts=URI,URI`), subscribed, in the default
    /// group.
    pub contacts: Vec<String>,
}

impl UserEntry {
    /// `DOMAIN\account`.
    pub fn login(&self) -> String {
        format!("{}\\{}", self.domain, self.account)
    }
}

impl fmt::Debug for UserEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserEntry")
            .field("login", &self.login())
            .field("password", &"<hidden>")
            .field("sip_uri", &self.sip_uri)
            .field("iwa", &self.iwa)
            .field("enabled", &self.enabled)
            .finish()
    }
}

/// A users file line that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsersError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub why: String,
}

impl fmt::Display for UsersError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "users file line {}: {}", self.line, self.why)
    }
}

impl std::error::Error for UsersError {}

/// The parsed users file, with lookups by login and SIP URI.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    /// Users in file order; indexes are stable ids.
    pub users: Vec<UserEntry>,
    by_uri: HashMap<String, usize>,
    by_login: HashMap<String, usize>,
}

impl Directory {
    /// Parses the users file text. Blank lines and lines starting with `#`
    /// are skipped.
    pub fn parse(text: &str) -> Result<Directory, UsersError> {
        let mut dir = Directory::default();
        for (n, raw) in text.lines().enumerate() {
            let line = n + 1;
            let err = |why: String| UsersError { line, why };
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let mut words = trimmed.split_whitespace();
            let (Some(login), Some(password), Some(uri)) =
                (words.next(), words.next(), words.next())
            else {
                return Err(err(
                    "expected `DOMAIN\\user PASSWORD sip:URI [OPTION...]`".into()
                ));
            };
            let (domain, account) = login
                .split_once('\\')
                .filter(|(d, a)| !d.is_empty() && !a.is_empty() && !a.contains('\\'))
                .ok_or_else(|| err(format!("login `{login}` is not DOMAIN\\user")))?;
            if !valid_sip_uri(uri) {
                return Err(err(format!("`{uri}` is not a sip:user@host URI")));
            }
            let mut entry = UserEntry {
                domain: domain.to_string(),
                account: account.to_string(),
                password: password.to_string(),
                sip_uri: uri.to_string(),
                display_name: account.to_string(),
                iwa: true,
                enabled: true,
                contacts: Vec::new(),
            };
            for option in words {
                let (key, value) = option
                    .split_once('=')
                    .ok_or_else(|| err(format!("option `{option}` is not key=value")))?;
                match key {
                    "iwa" => {
                        entry.iwa = yes_no(value)
                            .ok_or_else(|| err(format!("iwa={value}: expected yes or no")))?
                    }
                    "enabled" => {
                        entry.enabled = yes_no(value)
                            .ok_or_else(|| err(format!("enabled={value}: expected yes or no")))?
                    }
                    "name" if !value.is_empty() => entry.display_name = value.replace('_', " "),
                    "contacts" => {
                        for c in value.split(',').filter(|c| !c.is_empty()) {
                            if !valid_sip_uri(c) {
                                return Err(err(format!(
                                    "contact `{c}` is not a sip:user@host URI"
                                )));
                            }
                            entry.contacts.push(c.to_string());
                        }
                    }
                    _ => return Err(err(format!("unknown option `{option}`"))),
                }
            }
            let uri_key = entry.sip_uri.to_ascii_lowercase();
            let login_key = entry.login().to_ascii_lowercase();
            if dir.by_uri.contains_key(&uri_key) {
                return Err(err(format!("SIP URI {} listed twice", entry.sip_uri)));
            }
            if dir.by_login.contains_key(&login_key) {
                return Err(err(format!("login {} listed twice", entry.login())));
            }
            let idx = dir.users.len();
            dir.by_uri.insert(uri_key, idx);
            dir.by_login.insert(login_key, idx);
            dir.users.push(entry);
        }
        Ok(dir)
    }

    /// The user whose SIP URI is `uri` (case-insensitive).
    pub fn by_uri(&self, uri: &str) -> Option<usize> {
        self.by_uri.get(&uri.to_ascii_lowercase()).copied()
    }

    /// The user a typed login names: `DOMAIN\user`, or `user@domain` where
    /// `domain` is the NetBIOS domain, the SIP URI's host, or a DNS name
    /// whose first label is the NetBIOS domain. A bare `user` matches when
    /// exactly one domain has that account.
    pub fn by_login(&self, login: &str) -> Option<usize> {
        if let Some((domain, account)) = login.split_once('\\') {
            return self.by_domain_account(domain, account);
        }
        if let Some((account, host)) = login.rsplit_once('@') {
            return self.users.iter().position(|u| {
                u.account.eq_ignore_ascii_case(account)
                    && (u.domain.eq_ignore_ascii_case(host)
                        || sip_host(&u.sip_uri).is_some_and(|h| h.eq_ignore_ascii_case(host))
                        || host
                            .split('.')
                            .next()
                            .is_some_and(|first| first.eq_ignore_ascii_case(&u.domain)))
            });
        }
        self.by_domain_account("", login)
    }

    /// The user with this NetBIOS domain and account (case-insensitive); an
    /// empty domain matches an account that exists in one domain only.
    pub fn by_domain_account(&self, domain: &str, account: &str) -> Option<usize> {
        if domain.is_empty() {
            let mut found = self
                .users
                .iter()
                .enumerate()
                .filter(|(_, u)| u.account.eq_ignore_ascii_case(account));
            let first = found.next()?;
            return if found.next().is_none() {
                Some(first.0)
            } else {
                None
            };
        }
        self.by_login
            .get(&format!("{domain}\\{account}").to_ascii_lowercase())
            .copied()
    }
}

fn yes_no(v: &str) -> Option<bool> {
    match v {
        "yes" | "true" | "1" => Some(true),
        "no" | "false" | "0" => Some(false),
        _ => None,
    }
}

/// Whether `uri` looks like `sip:user@host` (no spaces, no markup).
pub fn valid_sip_uri(uri: &str) -> bool {
    let Some(rest) = uri.strip_prefix("sip:") else {
        return false;
    };
    let Some((user, host)) = rest.split_once('@') else {
        return false;
    };
    !user.is_empty()
        && !host.is_empty()
        && uri.len() <= 256
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+@'".contains(c))
}

fn sip_host(uri: &str) -> Option<&str> {
    uri.strip_prefix("sip:")?.split_once('@').map(|(_, h)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_users_and_options() {
        let d = Directory::parse(
            "# comment\n\nCONTOSO\\alice pw1 sip:alice@contoso.com name=Alice_Smith\n\
             CONTOSO\\bob pw2 sip:bob@contoso.com iwa=no enabled=no contacts=sip:alice@contoso.com\n",
        )
        .unwrap();
        assert_eq!(d.users.len(), 2);
        assert_eq!(d.users[0].display_name, "Alice Smith");
        assert!(d.users[0].iwa && d.users[0].enabled);
        assert!(!d.users[1].iwa && !d.users[1].enabled);
        assert_eq!(d.users[1].contacts, vec!["sip:alice@contoso.com"]);
        assert_eq!(d.by_login("contoso\\ALICE"), Some(0));
        assert_eq!(d.by_login("alice@contoso.com"), Some(0));
        assert_eq!(d.by_login("bob@CONTOSO"), Some(1));
        assert_eq!(d.by_login("bob"), Some(1));
        assert_eq!(d.by_login("carol"), None);
        assert_eq!(d.by_uri("SIP:Alice@Contoso.com"), Some(0));
        assert!(!format!("{:?}", d.users[0]).contains("pw1"));
    }

    #[test]
    fn bad_lines_name_their_line() {
        for (text, line) in [
            ("A\\a p sip:a@x\nbroken\n", 2),
            ("\n\nnodomain p sip:a@x\n", 3),
            ("A\\a p notsip\n", 1),
            ("A\\a p sip:a@x iwa=maybe\n", 1),
            ("A\\a p sip:a@x colour=red\n", 1),
            ("A\\a p sip:a@x\nA\\b p sip:a@x\n", 2),
            ("A\\a p sip:a@x\nA\\A q sip:b@x\n", 2),
        ] {
            let e = Directory::parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
        }
    }
}
