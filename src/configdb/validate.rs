/*!
Validation of what enters the Config DB: device PINs, logins, SIP URIs, CWA
URLs, instance names and transport keys. The SQL CHECKs are only a
backstop; these functions give the precise message.
*/

use std::fmt;

use super::DbError;

/// Parses a device PIN: exactly 8 hex digits (either case), e.g. `2100000a`
/// ([`crate::hex::parse_pin`], the one rule for PINs).
pub fn parse_pin(text: &str) -> Result<u32, DbError> {
    crate::hex::parse_pin(text)
        .ok_or_else(|| DbError::bad(format!("PIN {:?} is not 8 hex digits", shorten(text))))
}

/// Formats a PIN the way operators and devices write it: 8 lower-case hex
/// digits.
pub use crate::hex::format_pin;

/// A PIN as read back from its `bigint` column.
pub(crate) fn pin_from(value: i64) -> Result<u32, DbError> {
    u32::try_from(value).map_err(|_| DbError::bad(format!("stored PIN {value} is not 32-bit")))
}

/// Checks an instance name: 1 to 63 characters of letters, digits, `.`,
/// `_` and `-`, starting with a letter or digit.
pub fn parse_instance_name(text: &str) -> Result<&str, DbError> {
    let ok = !text.is_empty()
        && text.len() <= 63
        && text.as_bytes()[0].is_ascii_alphanumeric()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(text)
    } else {
        Err(DbError::bad(format!(
            "instance name {:?} must be 1-63 letters, digits, '.', '_' or '-'",
            shorten(text)
        )))
    }
}

/// Checks a login: `DOMAIN\user` (NetBIOS domain of up to 15 characters) or
/// a UPN `user@dns.domain`. No spaces or control characters.
pub fn parse_login(text: &str) -> Result<&str, DbError> {
    let bad = || {
        DbError::bad(format!(
            "login {:?} is neither DOMAIN\\user nor user@domain",
            shorten(text)
        ))
    };
    let plain = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| !c.is_whitespace() && !c.is_control() && c != '\\' && c != '@')
    };
    if let Some((domain, user)) = text.split_once('\\') {
        let domain_ok = !domain.is_empty()
            && domain.len() <= 15
            && domain.as_bytes()[0].is_ascii_alphanumeric()
            && domain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if domain_ok && plain(user) && user.chars().count() <= 104 {
            return Ok(text);
        }
        return Err(bad());
    }
    if let Some((user, domain)) = text.split_once('@') {
        if plain(user) && user.chars().count() <= 64 && is_dns_name(domain) {
            return Ok(text);
        }
    }
    Err(bad())
}

/// Whether two logins name the same account (Windows compares them without
/// regard to case).
pub fn logins_match(a: &str, b: &str) -> bool {
    a.to_lowercase() == b.to_lowercase()
}

/// Checks a SIP URI of the form `sip:user@domain` and returns it with the
/// scheme in lower case.
pub fn parse_sip_uri(text: &str) -> Result<String, DbError> {
    let bad = || {
        DbError::bad(format!(
            "SIP URI {:?} is not sip:user@domain",
            shorten(text)
        ))
    };
    let rest = match text.get(..4) {
        Some(scheme) if scheme.eq_ignore_ascii_case("sip:") => &text[4..],
        _ => return Err(bad()),
    };
    let (user, domain) = rest.split_once('@').ok_or_else(bad)?;
    let user_ok = !user.is_empty()
        && user.len() <= 64
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.!~*'()&=+$,;?/%".contains(&b));
    if !user_ok || !is_dns_name(domain) {
        return Err(bad());
    }
    Ok(format!("sip:{rest}"))
}

/// A parsed CWA URL: where collabd signs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CwaUrl {
    /// `true` for https.
    pub https: bool,
    /// Host name, IPv4 address, or IPv6 address without brackets.
    pub host: String,
    /// The port, defaulted from the scheme (443 or 80) when not given.
    pub port: u16,
    /// Path prefix without a trailing `/` (empty for the root).
    pub path: String,
}

impl CwaUrl {
    /// The URL of `path` (which starts with `/`) on this server.
    pub fn join(&self, path: &str) -> String {
        let scheme = if self.https { "https" } else { "http" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{scheme}://{host}:{}{}{path}", self.port, self.path)
    }
}

impl fmt::Display for CwaUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.join(""))
    }
}

/// Parses a CWA URL: `http` or `https`, a host, an optional port, an
/// optional path; no credentials, query or fragment.
pub fn parse_cwa_url(text: &str) -> Result<CwaUrl, DbError> {
    let bad = |why: &str| DbError::bad(format!("CWA URL {:?}: {why}", shorten(text)));
    let (https, rest) = if let Some(rest) = strip_prefix_ci(text, "https://") {
        (true, rest)
    } else if let Some(rest) = strip_prefix_ci(text, "http://") {
        (false, rest)
    } else {
        return Err(bad("the scheme must be http or https"));
    };
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("contains spaces or control characters"));
    }
    if text.contains(['?', '#']) {
        return Err(bad("a query or fragment is not allowed"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(bad("credentials in the URL are not allowed"));
    }
    let bracketed = authority.starts_with('[');
    let (host, port_text) = if let Some(after) = authority.strip_prefix('[') {
        let end = after.find(']').ok_or_else(|| bad("unclosed '['"))?;
        let host = &after[..end];
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("not an IPv6 address in brackets"));
        }
        let tail = &after[end + 1..];
        let port = match tail.strip_prefix(':') {
            Some(p) => Some(p),
            None if tail.is_empty() => None,
            None => return Err(bad("junk after the IPv6 address")),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if !bracketed && !is_dns_name(host) {
        return Err(bad("the host is not a valid name or address"));
    }
    let port = match port_text {
        None => {
            if https {
                443
            } else {
                80
            }
        }
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && !p.starts_with('+') => n,
            _ => return Err(bad("the port must be 1-65535")),
        },
    };
    Ok(CwaUrl {
        https,
        host: host.to_string(),
        port,
        path: path.trim_end_matches('/').to_string(),
    })
}

/// Parses a transport key written as 64 hex digits (surrounding white
/// space is ignored).
pub fn parse_hex_key(text: &str) -> Result<[u8; 32], DbError> {
    crate::hex::parse_key(text)
        .ok_or_else(|| DbError::bad("a transport key must be exactly 64 hex digits"))
}

/// A fresh 256-bit transport key from OpenSSL's CSPRNG.
pub fn generate_transport_key() -> Result<[u8; 32], DbError> {
    let mut key = [0u8; 32];
    openssl::rand::rand_bytes(&mut key)
        .map_err(|e| DbError::Query(format!("no random numbers from OpenSSL: {e}").into()))?;
    Ok(key)
}

/// A DNS name (letters, digits, hyphens, dot-separated labels of 1-63) or a
/// dotted IPv4 address, at most 253 characters.
fn is_dns_name(text: &str) -> bool {
    let text = text.strip_suffix('.').unwrap_or(text);
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn strip_prefix_ci<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    match text.get(..prefix.len()) {
        Some(head) if head.eq_ignore_ascii_case(prefix) => Some(&text[prefix.len()..]),
        _ => None,
    }
}

/// Bounds how much of hostile input goes into an error message.
fn shorten(text: &str) -> String {
    const MAX: usize = 80;
    if text.chars().count() <= MAX {
        text.to_string()
    } else {
        let head: String = text.chars().take(MAX).collect();
        format!("{head}...")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins() {
        assert_eq!(parse_pin("2100000a").unwrap(), 0x2100_000a);
        assert_eq!(parse_pin("FFFFFFFF").unwrap(), u32::MAX);
        assert_eq!(parse_pin("00000000").unwrap(), 0);
        for bad in [
            "",
            "2100000",
            "2100000a0",
            "2100000g",
            "+100000a",
            " 100000a",
            "２１００００００",
        ] {
            assert!(
                matches!(parse_pin(bad), Err(DbError::BadData { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(format_pin(0x2100_000a), "2100000a");
        assert_eq!(format_pin(1), "00000001");
    }

    #[test]
    fn logins() {
        for good in [
            "CORP\\alice",
            "corp-1\\bob.smith",
            "alice@corp.example.com",
            "a@corp",
        ] {
            assert!(parse_login(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "alice",
            "\\alice",
            "CORP\\",
            "CORP\\al ice",
            "averyveryverylongdomain\\x",
            "a@b@c",
            "@corp.com",
            "alice@",
            "alice@-corp.com",
            "CORP\\a\\b",
        ] {
            assert!(parse_login(bad).is_err(), "{bad:?}");
        }
        assert!(logins_match("CORP\\Alice", "corp\\alice"));
        assert!(!logins_match("CORP\\alice", "CORP\\bob"));
    }

    #[test]
    fn sip_uris() {
        assert_eq!(
            parse_sip_uri("sip:alice@corp.example.com").unwrap(),
            "sip:alice@corp.example.com"
        );
        assert_eq!(parse_sip_uri("SIP:alice@corp").unwrap(), "sip:alice@corp");
        for bad in [
            "",
            "alice@corp",
            "sips:alice@corp",
            "sip:@corp",
            "sip:alice@",
            "sip:al ice@corp",
            "sip:a@b@c",
            "sip:alice@corp_x",
        ] {
            assert!(parse_sip_uri(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cwa_urls() {
        let u = parse_cwa_url("https://cwa.corp.example.com").unwrap();
        assert!(u.https);
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("cwa.corp.example.com", 443, "")
        );
        let u = parse_cwa_url("http://127.0.0.1:8080/cwa/").unwrap();
        assert!(!u.https);
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 8080, "/cwa")
        );
        assert_eq!(
            u.join("/forms/logon.html"),
            "http://127.0.0.1:8080/cwa/forms/logon.html"
        );
        let u = parse_cwa_url("HTTPS://[::1]:4443").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 4443));
        assert_eq!(u.join("/x"), "https://[::1]:4443/x");
        for bad in [
            "",
            "cwa.corp.com",
            "ftp://cwa.corp.com",
            "https://",
            "https://:443",
            "https://cwa.corp.com:0",
            "https://cwa.corp.com:65536",
            "https://cwa.corp.com:x",
            "https://user:pw@cwa.corp.com",
            "https://cwa.corp.com/?a=b",
            "https://cwa corp.com",
            "https://[::1",
            "https://cwa_corp.com",
            "https://::1",
        ] {
            assert!(parse_cwa_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_and_names() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF\n";
        let key = parse_hex_key(hex).unwrap();
        assert_eq!(key[1], 0x11);
        assert_eq!(key[31], 0xff);
        assert!(parse_hex_key(&hex[..62]).is_err());
        assert!(
            parse_hex_key("zz112233445566778899aabbccddeeff00112233445566778899aabbccddeeff")
                .is_err()
        );
        let a = generate_transport_key().unwrap();
        let b = generate_transport_key().unwrap();
        assert_ne!(a, b);
        assert!(parse_instance_name("bcs-1.corp").is_ok());
        for bad in ["", "-x", "a b", "a/b", &"x".repeat(64)] {
            assert!(parse_instance_name(bad).is_err(), "{bad:?}");
        }
    }
}
