//! Connection parameters, parsed the way libpq parses them: a URL
//! (`postgres://user:pass@host:port/db?sslmode=require`) or a key=value string
//! (`host=db1 port=5432 user=app password='a b'`). Missing values come from the
//! usual `PG*` environment variables, then libpq's defaults.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use percent_encoding::percent_decode_str;

/// TLS negotiation, as libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS when the server offers it, without certificate checks; else plain.
    Prefer,
    /// TLS required; the certificate is not checked.
    Require,
    /// TLS required; the certificate chain must verify, any host name.
    VerifyCa,
    /// TLS required; the chain must verify and name the host.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<Self, ConnInfoError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            // libpq's `allow` tries plain first; we treat it like prefer.
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(ConnInfoError::BadValue {
                    key: "sslmode",
                    value: other.to_string(),
                    expected: "disable, allow, prefer, require, verify-ca or verify-full",
                })
            }
        })
    }
}

/// Everything needed to open a connection to one PostgreSQL server.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    pub sslmode: SslMode,
    /// PEM file with the CA certificates to trust (`sslrootcert`); else the
    /// bundled web PKI roots.
    pub sslrootcert: Option<PathBuf>,
    pub application_name: Option<String>,
    pub connect_timeout: Option<Duration>,
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the password.
        f.debug_struct("ConnInfo")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("dbname", &self.dbname)
            .field("sslmode", &self.sslmode)
            .field("application_name", &self.application_name)
            .finish()
    }
}

impl fmt::Display for ConnInfo {
    /// `user@host:port/db`, safe for logs (no password).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{}:{}/{}",
            self.user, self.host, self.port, self.dbname
        )
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnInfoError {
    #[error("invalid connection URL {url:?}: {why}; expected postgres://user:password@host:port/dbname?sslmode=...")]
    BadUrl { url: String, why: String },
    #[error("invalid connection string: {0}; expected key=value pairs like \"host=db1 port=5432 dbname=app\"")]
    BadKeyValue(String),
    #[error("invalid connection parameter {key}={value:?}: expected {expected}")]
    BadValue {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("unknown connection parameter {0:?}; supported: host, port, user, password, dbname, sslmode, sslrootcert, application_name, connect_timeout")]
    UnknownKey(String),
    #[error("connection parameter {0} given as {1:?} holds several hosts; pgbridge connects to one server, give one host")]
    MultiHost(&'static str, String),
}

const KNOWN_KEYS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "user",
    "password",
    "dbname",
    "sslmode",
    "sslrootcert",
    "application_name",
    "connect_timeout",
    // Accepted and ignored, so that strings written for libpq keep working.
    "fallback_application_name",
    "client_encoding",
    "options",
    "replication",
];

impl ConnInfo {
    /// Parses a URL or key=value string, filling gaps from `PG*` variables.
    pub fn parse(s: &str) -> Result<ConnInfo, ConnInfoError> {
        Self::parse_with_env(s, |k| std::env::var(k).ok())
    }

    /// As [`ConnInfo::parse`], with the environment given as a function (for tests).
    /// URL errors never show the password, even one with unencoded `/`,
    /// `?` or `@` that makes the URL parse otherwise (see [`redact_url`]).
    pub fn parse_with_env(
        s: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ConnInfo, ConnInfoError> {
        let s = s.trim();
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            parse_url(s)
                .and_then(|params| Self::from_params(params, env))
                .map_err(|e| unsplit_password(s, e))
        } else if s.contains("://") {
            Err(ConnInfoError::BadUrl {
                url: redact_url(s),
                why: "the scheme must be postgres:// or postgresql://".into(),
            })
        } else {
            Self::from_params(parse_key_value(s)?, env)
        }
    }

    fn from_params(
        params: BTreeMap<String, String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ConnInfo, ConnInfoError> {
        for k in params.keys() {
            if !KNOWN_KEYS.contains(&k.as_str()) {
                return Err(ConnInfoError::UnknownKey(k.clone()));
            }
        }
        let get = |key: &str, var: &str| -> Option<String> {
            params
                .get(key)
                .filter(|v| !v.is_empty())
                .cloned()
                .or_else(|| env(var).filter(|v| !v.is_empty()))
        };
        let host = get("hostaddr", "PGHOSTADDR")
            .or_else(|| get("host", "PGHOST"))
            .unwrap_or_else(|| "localhost".to_string());
        if host.contains(',') {
            return Err(ConnInfoError::MultiHost("host", host));
        }
        if host.starts_with('/') {
            return Err(ConnInfoError::BadValue {
                key: "host",
                value: host,
                expected: "a TCP host name or address (Unix sockets are not supported)",
            });
        }
        let port = match get("port", "PGPORT") {
            None => 5432,
            Some(p) => {
                if p.contains(',') {
                    return Err(ConnInfoError::MultiHost("port", p));
                }
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or(ConnInfoError::BadValue {
                        key: "port",
                        value: p,
                        expected: "a TCP port number 1-65535",
                    })?
            }
        };
        let user = get("user", "PGUSER")
            .or_else(|| env("USER"))
            .unwrap_or_else(|| "postgres".to_string());
        let dbname = get("dbname", "PGDATABASE").unwrap_or_else(|| user.clone());
        let sslmode = match get("sslmode", "PGSSLMODE") {
            None => SslMode::Prefer,
            Some(m) => SslMode::parse(&m)?,
        };
        let connect_timeout = match get("connect_timeout", "PGCONNECT_TIMEOUT") {
            None => None,
            Some(t) => {
                let secs = t.parse::<u64>().map_err(|_| ConnInfoError::BadValue {
                    key: "connect_timeout",
                    value: t.clone(),
                    expected: "a whole number of seconds",
                })?;
                // libpq: zero or less means wait forever; below 2 is raised to 2.
                (secs > 0).then(|| Duration::from_secs(secs.max(2)))
            }
        };
        Ok(ConnInfo {
            host,
            port,
            password: params
                .get("password")
                .cloned()
                .or_else(|| env("PGPASSWORD")),
            user,
            dbname,
            sslmode,
            sslrootcert: get("sslrootcert", "PGSSLROOTCERT").map(PathBuf::from),
            application_name: get("application_name", "PGAPPNAME"),
            connect_timeout,
        })
    }
}

fn decode(part: &str, url: &str) -> Result<String, ConnInfoError> {
    percent_decode_str(part)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| ConnInfoError::BadUrl {
            url: redact_url(url),
            why: format!("{part:?} is not valid percent-encoded UTF-8"),
        })
}

/// As [`decode`] for the user name and password: the message does not
/// echo the part.
fn decode_secret(part: &str, url: &str, what: &str) -> Result<String, ConnInfoError> {
    decode(part, url).map_err(|_| ConnInfoError::BadUrl {
        url: redact_url(url),
        why: format!("the {what} is not valid percent-encoded UTF-8"),
    })
}

/// Where the credentials of a `scheme://...` string can be: from after
/// `://` to its last `@`. Deliberately wider than the user info of a
/// well-formed URL: a password with an unencoded `/`, `?`, `#` or `@`
/// (base64 passwords from `${VAR}`) makes the URL parse otherwise, and it
/// must not show in the error that says so.
pub(crate) fn credentials_span(url: &str) -> Option<std::ops::Range<usize>> {
    let start = url.find("://")? + 3;
    let end = start + url[start..].rfind('@')?;
    Some(start..end)
}

/// `url` (a connection URL, whole) with what sits between `://` and the
/// last `@` replaced by `user:***` (or `***` when the user name cannot be
/// told apart), for error messages and logs. Text without `://` or `@` is
/// returned as it is.
pub fn redact_url(url: &str) -> String {
    let Some(span) = credentials_span(url) else {
        return url.to_string();
    };
    let creds = &url[span.clone()];
    let plain = |t: &str| !t.contains(['/', '?', '#', ':', '@', '$']);
    let shown = match creds.split_once(':') {
        Some((user, _)) if plain(user) => format!("{user}:***"),
        // A user name alone is no secret.
        None if plain(creds) => creds.to_string(),
        _ => "***".to_string(),
    };
    format!("{}{shown}{}", &url[..span.start], &url[span.end..])
}

/// Every `scheme://...@` in `text` (a message from another library that
/// may quote a URL) redacted as by [`redact_url`]; a URL ends at white
/// space or a quote.
pub fn redact_urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let end = rest[i..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>'))
            .map_or(rest.len(), |e| i + e);
        let begin = rest[..i]
            .rfind(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '(' | '<'))
            .map_or(0, |b| b + 1);
        out.push_str(&rest[..begin]);
        out.push_str(&redact_url(&rest[begin..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// An error from parsing `url` whose credentials hold a `/`, `?` or `#`:
/// as in libpq, the URL's host part then ended before the last `@`, so
/// the message (a bad port, an unknown parameter) would quote a piece of
/// the password and send the reader the wrong way. It is replaced by one
/// that says what to do.
fn unsplit_password(url: &str, e: ConnInfoError) -> ConnInfoError {
    match credentials_span(url) {
        Some(span) if url[span.clone()].contains(['/', '?', '#']) => ConnInfoError::BadUrl {
            url: redact_url(url),
            why:
                "the text before the last '@' holds '/', '?' or '#', so the host part ends early; \
                  if they belong to the password (or user name), percent-encode them \
                  (%2F, %3F, %23; '@' as %40)"
                    .into(),
        },
        _ => e,
    }
}

fn parse_url(url: &str) -> Result<BTreeMap<String, String>, ConnInfoError> {
    let bad = |why: &str| ConnInfoError::BadUrl {
        url: redact_url(url),
        why: why.to_string(),
    };
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or("");
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (before_query, None),
    };
    let mut params = BTreeMap::new();
    let hostport = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => {
            match userinfo.split_once(':') {
                Some((u, p)) => {
                    params.insert("user".into(), decode_secret(u, url, "user name")?);
                    params.insert("password".into(), decode_secret(p, url, "password")?);
                }
                None => {
                    params.insert("user".into(), decode_secret(userinfo, url, "user name")?);
                }
            }
            hostport
        }
        None => authority,
    };
    if hostport.contains(',') {
        return Err(ConnInfoError::MultiHost("host", hostport.to_string()));
    }
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("an IPv6 address opened with '[' is not closed with ']'"))?;
        match after {
            "" => (h.to_string(), None),
            p if p.starts_with(':') => (h.to_string(), Some(&p[1..])),
            _ => return Err(bad("unexpected text after the IPv6 address")),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (decode(h, url)?, Some(p)),
            None => (decode(hostport, url)?, None),
        }
    };
    if !host.is_empty() {
        params.insert("host".into(), host);
    }
    if let Some(p) = port {
        if p.is_empty() || p.parse::<u16>().is_err() {
            return Err(bad(&format!("port {p:?} is not a number 1-65535")));
        }
        params.insert("port".into(), p.to_string());
    }
    if let Some(db) = path {
        if !db.is_empty() {
            params.insert("dbname".into(), decode(db, url)?);
        }
    }
    if let Some(q) = query {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| bad(&format!("query parameter {pair:?} has no '='")))?;
            let k = decode(k, url)?;
            let k = if k == "ssl" && v == "true" {
                params.insert("sslmode".into(), "require".into());
                continue;
            } else {
                k
            };
            params.insert(k, decode(v, url)?);
        }
    }
    Ok(params)
}

fn parse_key_value(s: &str) -> Result<BTreeMap<String, String>, ConnInfoError> {
    let mut params = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(ConnInfoError::BadKeyValue(format!(
                "missing \"=\" after {key:?}"
            )));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some(e) => value.push(e),
                        None => break,
                    },
                    '\'' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return Err(ConnInfoError::BadKeyValue(format!(
                    "unterminated quoted value for {key:?}"
                )));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    if let Some(e) = chars.next() {
                        value.push(e);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        if key.is_empty() {
            return Err(ConnInfoError::BadKeyValue("a value without a key".into()));
        }
        params.insert(key, value);
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn url_with_everything() {
        let c = ConnInfo::parse_with_env(
            "postgres://rep%40x:p%3Ass@db1.example:6543/app%20db?sslmode=verify-full&application_name=b&connect_timeout=5",
            no_env,
        )
        .unwrap();
        assert_eq!(c.user, "rep@x");
        assert_eq!(c.password.as_deref(), Some("p:ss"));
        assert_eq!(c.host, "db1.example");
        assert_eq!(c.port, 6543);
        assert_eq!(c.dbname, "app db");
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert_eq!(c.application_name.as_deref(), Some("b"));
        assert_eq!(c.connect_timeout, Some(Duration::from_secs(5)));
    }

    #[test]
    fn url_defaults_and_ipv6() {
        let c = ConnInfo::parse_with_env("postgresql://[::1]:5433", |k| {
            (k == "PGUSER").then(|| "alice".to_string())
        })
        .unwrap();
        assert_eq!(c.host, "::1");
        assert_eq!(c.port, 5433);
        assert_eq!(c.user, "alice");
        assert_eq!(c.dbname, "alice");
        assert_eq!(c.sslmode, SslMode::Prefer);
        let c = ConnInfo::parse_with_env("postgres://", no_env).unwrap();
        assert_eq!(c.host, "localhost");
        assert_eq!(c.port, 5432);
    }

    #[test]
    fn key_value_with_quotes() {
        let c = ConnInfo::parse_with_env(
            "host=127.0.0.1 port = 5999 user=bob password='it\\'s a secret' dbname=x sslmode=disable",
            no_env,
        )
        .unwrap();
        assert_eq!(c.host, "127.0.0.1");
        assert_eq!(c.port, 5999);
        assert_eq!(c.password.as_deref(), Some("it's a secret"));
        assert_eq!(c.sslmode, SslMode::Disable);
    }

    #[test]
    fn env_fills_gaps() {
        let c = ConnInfo::parse_with_env("dbname=x", |k| match k {
            "PGHOST" => Some("h".into()),
            "PGPORT" => Some("7".into()),
            "PGPASSWORD" => Some("pw".into()),
            "PGSSLMODE" => Some("require".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!((c.host.as_str(), c.port), ("h", 7));
        assert_eq!(c.password.as_deref(), Some("pw"));
        assert_eq!(c.sslmode, SslMode::Require);
    }

    #[test]
    fn bad_inputs_name_the_problem() {
        let cases = [
            ("postgres://u:secret@h:notaport/db", "port"),
            ("mysql://h/db", "scheme"),
            ("postgres://h/db?sslmode=maybe", "sslmode"),
            ("host=a bogus=1", "bogus"),
            ("host", "missing"),
            ("password='open", "unterminated"),
            ("postgres://h1,h2/db", "several hosts"),
            ("postgres://h/db?connect_timeout=soon", "connect_timeout"),
            ("postgres://[::1/db", "IPv6"),
        ];
        for (input, needle) in cases {
            let err = ConnInfo::parse_with_env(input, no_env)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{input}: {err}");
            assert!(!err.contains("secret"), "password leaked: {err}");
        }
    }

    /// Base64 passwords (from `${VAR}`) hold `/`, `+` and `=`; with `?`,
    /// `#` or `@` too, the URL splits inside the password. Whatever the
    /// parse trips on, no message shows any of it.
    #[test]
    fn passwords_with_url_delimiters_never_show() {
        let secrets = [
            "ab12/cd+ef==",
            "/l3ading",
            "x?applicati0n_nam3=z9",
            "q?w/e#r",
            "p@zz/w0rd",
            "tr4iling/",
            "a9?b8=c7x",
        ];
        for pw in secrets {
            for url in [
                format!("postgres://app:{pw}@db1:5432/app"),
                format!("postgres://app:{pw}@db1:notaport/app"),
                format!("postgresql://app:{pw}@db1/app?sslmode=maybe"),
                format!("mysql://app:{pw}@db1/app"),
            ] {
                let Err(e) = ConnInfo::parse_with_env(&url, no_env) else {
                    continue;
                };
                let e = e.to_string();
                for piece in pw.split(['/', '?', '#', '@', '=']).filter(|p| p.len() > 1) {
                    assert!(!e.contains(piece), "{piece:?} of the password in: {e}");
                }
                assert!(e.contains("app:***@db1"), "{e}");
            }
        }
        // A split password gets the fix, not a misleading detail.
        let e = ConnInfo::parse_with_env("postgres://app:ab12/cd==@db1/app", no_env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("percent-encode") && e.contains("%2F"), "{e}");
        // Bad percent-encoding in the password is named, not quoted.
        let e = ConnInfo::parse_with_env("postgres://app:s3cr%FFt@db1/app", no_env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("password") && !e.contains("s3cr"), "{e}");
    }

    #[test]
    fn redaction() {
        assert_eq!(redact_url("postgres://u:pw@h/db"), "postgres://u:***@h/db");
        assert_eq!(
            redact_url("postgres://u:a/b?c@d@h:1/db?x=y"),
            "postgres://u:***@h:1/db?x=y"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
        assert_eq!(redact_url("postgres://u/x@h/db"), "postgres://***@h/db");
        assert_eq!(redact_url("host=h password=x"), "host=h password=x");
        assert_eq!(
            redact_urls_in(
                "error sending request for url (https://u:p/q@reg:8081/subjects): refused"
            ),
            "error sending request for url (https://u:***@reg:8081/subjects): refused"
        );
        assert_eq!(redact_urls_in("no url here"), "no url here");
    }
}
