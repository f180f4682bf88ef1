//! Connection parameters, parsed the way libpq parses them: a URL
//! (`postgres://user:pass@host:port/db?sslmode=require`) or a key=value string
//! (`host=db1 port=5432 user=app password='a b'`). Missing values come from the
//! usual `PG*` environment variables, then libpq's defaults.
//!
//! Several hosts are accepted as libpq accepts them
//! (`postgres://h1:5432,h2:5433/app?target_session_attrs=read-write`,
//! `host=h1,h2 port=5432,5433`): a connection tries them in order and keeps
//! the first that answers and has the session type `target_session_attrs`
//! asks for (see [`ConnInfo::candidates`]). That is how a source behind a
//! failover is followed: whichever host is the primary now is found.

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

/// libpq's `target_session_attrs`: which of the listed hosts a connection
/// accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetSessionAttrs {
    /// The first host that accepts the connection (libpq's default).
    Any,
    /// A session that can write (`transaction_read_only` is off).
    ReadWrite,
    /// A session that cannot write.
    ReadOnly,
    /// A server that is not in recovery.
    Primary,
    /// A server in recovery (a hot standby).
    Standby,
    /// A standby when one answers, else any host.
    PreferStandby,
}

impl TargetSessionAttrs {
    fn parse(s: &str) -> Result<Self, ConnInfoError> {
        Ok(match s {
            "any" => TargetSessionAttrs::Any,
            "read-write" => TargetSessionAttrs::ReadWrite,
            "read-only" => TargetSessionAttrs::ReadOnly,
            "primary" => TargetSessionAttrs::Primary,
            "standby" => TargetSessionAttrs::Standby,
            "prefer-standby" => TargetSessionAttrs::PreferStandby,
            other => {
                return Err(ConnInfoError::BadValue {
                    key: "target_session_attrs",
                    value: other.to_string(),
                    expected: "any, read-write, read-only, primary, standby or prefer-standby",
                })
            }
        })
    }

    /// The value as libpq spells it.
    pub fn name(self) -> &'static str {
        match self {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::ReadOnly => "read-only",
            TargetSessionAttrs::Primary => "primary",
            TargetSessionAttrs::Standby => "standby",
            TargetSessionAttrs::PreferStandby => "prefer-standby",
        }
    }

    /// Whether a server in this state is acceptable (`prefer-standby`
    /// takes standbys in its first pass; see [`ConnInfo::candidates`]).
    pub fn accepts(self, in_recovery: bool, read_only: bool) -> bool {
        match self {
            TargetSessionAttrs::Any => true,
            TargetSessionAttrs::ReadWrite => !read_only,
            TargetSessionAttrs::ReadOnly => read_only,
            TargetSessionAttrs::Primary => !in_recovery,
            TargetSessionAttrs::Standby | TargetSessionAttrs::PreferStandby => in_recovery,
        }
    }
}

/// Everything needed to open a connection to a PostgreSQL server.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// The first (or only) host; see `hosts` for all of them.
    pub host: String,
    /// The first (or only) host's port.
    pub port: u16,
    /// Every host with its port, in the order given (at least one; the
    /// first is `host`/`port`).
    pub hosts: Vec<(String, u16)>,
    /// `target_session_attrs` when given (`None`: libpq's `any`).
    pub target_session_attrs: Option<TargetSessionAttrs>,
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
            .field("hosts", &self.hosts)
            .field("target_session_attrs", &self.target_session_attrs)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("dbname", &self.dbname)
            .field("sslmode", &self.sslmode)
            .field("application_name", &self.application_name)
            .finish()
    }
}

impl fmt::Display for ConnInfo {
    /// `user@host:port/db` (`user@h1:p1,h2:p2/db` with several hosts),
    /// safe for logs (no password).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@", self.user)?;
        if self.hosts.len() <= 1 {
            return write!(f, "{}:{}/{}", self.host, self.port, self.dbname);
        }
        for (i, (h, p)) in self.hosts.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            if h.contains(':') {
                write!(f, "{sep}[{h}]:{p}")?;
            } else {
                write!(f, "{sep}{h}:{p}")?;
            }
        }
        write!(f, "/{}", self.dbname)
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
    #[error("unknown connection parameter {0:?}; supported: host, port, user, password, dbname, sslmode, sslrootcert, application_name, connect_timeout, target_session_attrs")]
    UnknownKey(String),
    #[error("{ports} ports given for {hosts} hosts; give one port for all hosts, or one per host (port=5432,5433 with host=h1,h2)")]
    PortCount { hosts: usize, ports: usize },
    #[error("the host list {0:?} has an empty entry; remove the extra comma")]
    EmptyHost(String),
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
    "target_session_attrs",
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
        let host_list = get("hostaddr", "PGHOSTADDR")
            .or_else(|| get("host", "PGHOST"))
            .unwrap_or_else(|| "localhost".to_string());
        let names: Vec<String> = host_list.split(',').map(|h| h.trim().to_string()).collect();
        if names.len() > 1 && names.iter().any(String::is_empty) {
            return Err(ConnInfoError::EmptyHost(host_list));
        }
        if let Some(h) = names.iter().find(|h| h.starts_with('/')) {
            return Err(ConnInfoError::BadValue {
                key: "host",
                value: h.clone(),
                expected: "a TCP host name or address (Unix sockets are not supported)",
            });
        }
        let parse_port = |p: &str| -> Result<Option<u16>, ConnInfoError> {
            if p.is_empty() {
                return Ok(None);
            }
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .map(Some)
                .ok_or(ConnInfoError::BadValue {
                    key: "port",
                    value: p.to_string(),
                    expected: "a TCP port number 1-65535",
                })
        };
        let ports: Vec<Option<u16>> = match get("port", "PGPORT") {
            None => vec![None],
            Some(p) => p
                .split(',')
                .map(|p| parse_port(p.trim()))
                .collect::<Result<_, _>>()?,
        };
        if ports.len() != 1 && ports.len() != names.len() {
            return Err(ConnInfoError::PortCount {
                hosts: names.len(),
                ports: ports.len(),
            });
        }
        let hosts: Vec<(String, u16)> = names
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                let h = if h.is_empty() { "localhost".into() } else { h };
                let p = ports.get(i).or(ports.first()).copied().flatten();
                (h, p.unwrap_or(5432))
            })
            .collect();
        let (host, port) = hosts
            .first()
            .cloned()
            .unwrap_or_else(|| ("localhost".to_string(), 5432));
        let target_session_attrs = get("target_session_attrs", "PGTARGETSESSIONATTRS")
            .map(|v| TargetSessionAttrs::parse(&v))
            .transpose()?;
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
            hosts,
            target_session_attrs,
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

impl ConnInfo {
    /// Whether more than one host is listed.
    pub fn is_multi_host(&self) -> bool {
        self.hosts.len() > 1
    }

    /// `target_session_attrs`, `any` when not given.
    pub fn session_attrs(&self) -> TargetSessionAttrs {
        self.target_session_attrs.unwrap_or(TargetSessionAttrs::Any)
    }

    /// Whether a connection must ask the server whether it is a standby
    /// and read-only before keeping it (`target_session_attrs` other
    /// than `any`).
    pub fn checks_session(&self) -> bool {
        self.session_attrs() != TargetSessionAttrs::Any
    }

    /// The same parameters for `host:port` alone.
    pub fn with_host(&self, host: &str, port: u16) -> ConnInfo {
        ConnInfo {
            host: host.to_string(),
            port,
            hosts: vec![(host.to_string(), port)],
            ..self.clone()
        }
    }

    /// One single-host [`ConnInfo`] per listed host, in the order given:
    /// what a connection tries, one after the other.
    pub fn candidates(&self) -> Vec<ConnInfo> {
        self.hosts
            .iter()
            .map(|(h, p)| self.with_host(h, *p))
            .collect()
    }
}

/// What a server said about its session when asked (see
/// [`TargetSessionAttrs::accepts`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionState {
    pub in_recovery: bool,
    pub read_only: bool,
}

impl SessionState {
    /// What it is, for messages: "a standby (in recovery)", ...
    pub fn describe(self) -> &'static str {
        match (self.in_recovery, self.read_only) {
            (true, _) => "a standby (in recovery)",
            (false, true) => "a primary with default_transaction_read_only on",
            (false, false) => "a primary (read-write)",
        }
    }
}

/// Why one host of a list was not taken.
#[derive(Debug)]
pub enum Refusal<E> {
    /// The connection failed.
    Failed(E),
    /// It connected, but the server is not what `target_session_attrs`
    /// asks for.
    Unsuitable(SessionState),
}

/// Tries the hosts of `info` in order, as libpq does: `open` connects to
/// one host (a single-host [`ConnInfo`]) and, when `check` is true, says
/// the server's [`SessionState`]; the first connection whose state
/// `target_session_attrs` accepts is returned. `prefer-standby` keeps the
/// first other connection in case no standby answers. On failure, every
/// host with why it was not taken.
pub async fn connect_first<C, E, Fut>(
    info: &ConnInfo,
    mut open: impl FnMut(ConnInfo, bool) -> Fut,
) -> Result<C, Vec<(ConnInfo, Refusal<E>)>>
where
    Fut: std::future::Future<Output = Result<(C, Option<SessionState>), E>>,
{
    let attrs = info.session_attrs();
    let check = attrs != TargetSessionAttrs::Any;
    let mut refused = Vec::new();
    let mut fallback = None;
    for candidate in info.candidates() {
        match open(candidate.clone(), check).await {
            Err(e) => refused.push((candidate, Refusal::Failed(e))),
            Ok((conn, None)) => return Ok(conn),
            Ok((conn, Some(state))) => {
                if attrs.accepts(state.in_recovery, state.read_only) {
                    return Ok(conn);
                }
                if attrs == TargetSessionAttrs::PreferStandby {
                    if fallback.is_none() {
                        fallback = Some(conn);
                    }
                    continue;
                }
                refused.push((candidate, Refusal::Unsuitable(state)));
            }
        }
    }
    fallback.ok_or(refused)
}

/// The hosts of a failed [`connect_first`] with why each was not taken,
/// for an error message: `db1:5432: cannot connect ...; db2:5432: a
/// standby (in recovery)`.
pub fn describe_refusals<E: fmt::Display>(refused: &[(ConnInfo, Refusal<E>)]) -> String {
    refused
        .iter()
        .map(|(c, r)| match r {
            Refusal::Failed(e) => format!("{}:{}: {e}", c.host, c.port),
            Refusal::Unsuitable(s) => format!("{}:{}: {}", c.host, c.port, s.describe()),
        })
        .collect::<Vec<_>>()
        .join("; ")
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
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    for hostport in hostport.split(',') {
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
        if let Some(p) = port {
            if p.is_empty() || p.parse::<u16>().is_err() {
                return Err(bad(&format!("port {p:?} is not a number 1-65535")));
            }
        }
        hosts.push(host);
        ports.push(port.unwrap_or(""));
    }
    if hosts.len() > 1 && hosts.iter().any(String::is_empty) {
        return Err(bad(
            "the host list has an empty entry; remove the extra comma",
        ));
    }
    if hosts.iter().any(|h| !h.is_empty()) {
        params.insert("host".into(), hosts.join(","));
    }
    if ports.iter().any(|p| !p.is_empty()) {
        params.insert("port".into(), ports.join(","));
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
mod tests;
