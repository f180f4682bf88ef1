//! One PostgreSQL frontend/backend protocol connection: startup, TLS,
//! authentication (trust, cleartext, MD5, SCRAM-SHA-256), the simple query
//! protocol, and (in `conn/copy.rs`) raw CopyBoth and COPY OUT I/O. Used
//! both as a replication connection (`replication=database`) and as a
//! normal one for catalog queries and the initial copy.
//!
//! Message framing comes from `postgres-protocol`; mainline tokio-postgres
//! cannot speak the replication sub-protocol, so the loop is ours.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::backend::{self, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::conninfo::{connect_first, describe_refusals, ConnInfo, Refusal, SessionState, SslMode};
use super::error::{DbError, SourceError};
use super::tls;

mod copy;

/// TCP or TLS-over-TCP.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The rows of one statement of a simple query, all values in text form.
#[derive(Debug, Default, Clone)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
    pub tag: String,
}

impl QueryResult {
    /// Value of `column` in row `row`, `None` when absent or NULL.
    pub fn get(&self, row: usize, column: &str) -> Option<&str> {
        let idx = self.columns.iter().position(|c| c == column)?;
        self.rows.get(row)?.get(idx)?.as_deref()
    }
}

/// Whether the connection is a walsender (`replication=database`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Normal,
    Replication,
}

pub struct Connection {
    stream: Stream,
    read_buf: BytesMut,
    write_buf: BytesMut,
    target: String,
    params: HashMap<String, String>,
    info: ConnInfo,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("target", &self.target)
            .finish()
    }
}

pub(crate) fn db_error(body: &backend::ErrorResponseBody) -> DbError {
    let mut e = DbError {
        severity: String::new(),
        code: String::new(),
        message: String::new(),
        detail: None,
        hint: None,
    };
    let mut fields = body.fields();
    while let Ok(Some(f)) = fields.next() {
        let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'V' => e.severity = v,
            b'S' if e.severity.is_empty() => e.severity = v,
            b'C' => e.code = v,
            b'M' => e.message = v,
            b'D' => e.detail = Some(v),
            b'H' => e.hint = Some(v),
            _ => {}
        }
    }
    e
}

impl Connection {
    /// Opens a connection and authenticates. `Mode::Replication` asks for a
    /// logical walsender bound to the database (`replication=database`).
    ///
    /// With several hosts (or `target_session_attrs`), they are tried in
    /// order and the first whose session type fits is kept, as libpq does
    /// (see [`connect_first`]); the connection's [`info`](Self::info) is
    /// then that host's.
    pub async fn connect(info: &ConnInfo, mode: Mode) -> Result<Connection, SourceError> {
        if !info.is_multi_host() && !info.checks_session() {
            return Self::connect_one(info, mode).await;
        }
        connect_first(info, |one, check| async move {
            let mut conn = Self::connect_one(&one, mode).await?;
            let state = match check {
                true => Some(conn.session_state().await?),
                false => None,
            };
            Ok::<_, SourceError>((conn, state))
        })
        .await
        .map_err(|refused| SourceError::NoSuitableHost {
            hosts: info.to_string(),
            attrs: info.session_attrs().name(),
            // A host that is down or still a standby may be the primary
            // in a moment (a failover in progress); a bad password is not
            // worth retrying.
            transient: refused.iter().all(|(_, r)| match r {
                Refusal::Failed(e) => e.is_transient(),
                Refusal::Unsuitable(_) => true,
            }),
            why: describe_refusals(&refused),
        })
    }

    /// Whether the server is in recovery and the session read-only (what
    /// `target_session_attrs` looks at).
    pub async fn session_state(&mut self) -> Result<SessionState, SourceError> {
        let r = self
            .query_one(
                "SELECT pg_catalog.pg_is_in_recovery()::text AS r, \
                 pg_catalog.current_setting('transaction_read_only') AS ro",
            )
            .await?;
        Ok(SessionState {
            in_recovery: r.get(0, "r") == Some("true"),
            read_only: r.get(0, "ro") == Some("on"),
        })
    }

    /// [`connect`](Self::connect) to the one host of `info`.
    async fn connect_one(info: &ConnInfo, mode: Mode) -> Result<Connection, SourceError> {
        let target = info.to_string();
        let fut = Self::connect_inner(info, mode, target.clone());
        match info.connect_timeout {
            Some(t) => {
                tokio::time::timeout(t, fut)
                    .await
                    .map_err(|_| SourceError::ConnectTimeout {
                        target,
                        secs: t.as_secs(),
                    })?
            }
            None => fut.await,
        }
    }

    async fn connect_inner(
        info: &ConnInfo,
        mode: Mode,
        target: String,
    ) -> Result<Connection, SourceError> {
        let tcp = TcpStream::connect((info.host.as_str(), info.port))
            .await
            .map_err(|source| SourceError::Connect {
                target: target.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let stream = Self::negotiate_tls(tcp, info, &target).await?;
        let mut conn = Connection {
            stream,
            read_buf: BytesMut::with_capacity(64 * 1024),
            write_buf: BytesMut::with_capacity(8 * 1024),
            target,
            params: HashMap::new(),
            info: info.clone(),
        };
        conn.startup(mode).await?;
        // PostgreSQL 17's transaction_timeout would end the exporting
        // replication connection's snapshot transaction (the whole copy
        // waits in it) like the timeouts above; servers before 17 reject
        // it as a startup parameter, so it is turned off here, by a query
        // that is a no-op before 17 (a replication=database session
        // takes SQL).
        conn.simple_query(crate::pg::TRANSACTION_TIMEOUT_OFF)
            .await?;
        Ok(conn)
    }

    async fn negotiate_tls(
        mut tcp: TcpStream,
        info: &ConnInfo,
        target: &str,
    ) -> Result<Stream, SourceError> {
        if info.sslmode == SslMode::Disable {
            return Ok(Stream::Plain(tcp));
        }
        let io_err = |source| SourceError::Io {
            target: target.to_string(),
            source,
        };
        let mut buf = BytesMut::new();
        frontend::ssl_request(&mut buf);
        tcp.write_all(&buf).await.map_err(io_err)?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await.map_err(io_err)?;
        match answer[0] {
            b'S' => {
                let tls_err = |why: String| SourceError::Tls {
                    target: target.to_string(),
                    why,
                };
                let config = tls::client_config(info).map_err(tls_err)?;
                let name = tls::server_name(&info.host).map_err(tls_err)?;
                let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| tls_err(e.to_string()))?;
                Ok(Stream::Tls(Box::new(tls)))
            }
            b'N' if info.sslmode == SslMode::Prefer => Ok(Stream::Plain(tcp)),
            b'N' => Err(SourceError::TlsUnavailable {
                target: target.to_string(),
                mode: match info.sslmode {
                    SslMode::Require => "require",
                    SslMode::VerifyCa => "verify-ca",
                    _ => "verify-full",
                },
            }),
            other => Err(SourceError::Protocol {
                target: target.to_string(),
                why: format!("unexpected answer {other:#x} to the SSL request"),
            }),
        }
    }

    async fn startup(&mut self, mode: Mode) -> Result<(), SourceError> {
        let info = self.info.clone();
        let mut params: Vec<(&str, &str)> = vec![
            ("user", info.user.as_str()),
            ("database", info.dbname.as_str()),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO"),
            ("IntervalStyle", "postgres"),
            ("extra_float_digits", "3"),
            // A role's or database's timeouts are meant for applications:
            // the initial copy keeps the exporting replication connection
            // and its copy connections idle inside their snapshot
            // transactions while targets load and rebuild indexes, and one
            // chunk's COPY can outlast any statement timeout. Either cut
            // would lose the snapshot (and restart the copy) or stop it.
            // Creating a logical slot waits for every transaction running
            // on the server to end (a lock wait on each): a `lock_timeout`
            // would fail it whenever some application keeps one open.
            ("statement_timeout", "0"),
            ("lock_timeout", "0"),
            ("idle_in_transaction_session_timeout", "0"),
        ];
        if mode == Mode::Replication {
            params.push(("replication", "database"));
        }
        let app = info.application_name.as_deref().unwrap_or("pgbridge");
        params.push(("application_name", app));
        frontend::startup_message(params.iter().copied(), &mut self.write_buf)
            .map_err(|e| self.protocol(e.to_string()))?;
        self.flush().await?;

        loop {
            match self.read_message().await? {
                Message::AuthenticationOk => {}
                Message::AuthenticationCleartextPassword => {
                    let pw = self.password()?;
                    frontend::password_message(pw.as_bytes(), &mut self.write_buf)
                        .map_err(|e| self.protocol(e.to_string()))?;
                    self.flush().await?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let pw = self.password()?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        info.user.as_bytes(),
                        pw.as_bytes(),
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut self.write_buf)
                        .map_err(|e| self.protocol(e.to_string()))?;
                    self.flush().await?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut has_scram = false;
                    let mut mechs = body.mechanisms();
                    while let Ok(Some(m)) = mechs.next() {
                        if m == sasl::SCRAM_SHA_256 {
                            has_scram = true;
                        }
                    }
                    if !has_scram {
                        return Err(SourceError::UnsupportedAuth {
                            target: self.target.clone(),
                            method: "SASL without SCRAM-SHA-256".into(),
                        });
                    }
                    let pw = self.password()?;
                    self.scram(&pw).await?;
                }
                Message::AuthenticationGss
                | Message::AuthenticationKerberosV5
                | Message::AuthenticationSspi
                | Message::AuthenticationScmCredential
                | Message::AuthenticationGssContinue(_) => {
                    return Err(SourceError::UnsupportedAuth {
                        target: self.target.clone(),
                        method: "GSSAPI/Kerberos/SSPI".into(),
                    });
                }
                Message::ParameterStatus(p) => {
                    if let (Ok(k), Ok(v)) = (p.name(), p.value()) {
                        self.params.insert(k.to_string(), v.to_string());
                    }
                }
                Message::BackendKeyData(_) | Message::NoticeResponse(_) => {}
                Message::ReadyForQuery(_) => return Ok(()),
                Message::ErrorResponse(body) => {
                    return Err(self.startup_error(db_error(&body), mode));
                }
                _ => return Err(self.protocol("unexpected message during startup".into())),
            }
        }
    }

    fn startup_error(&self, error: DbError, mode: Mode) -> SourceError {
        let user = self.info.user.clone();
        let target = self.target.clone();
        match error.code.as_str() {
            "28P01" => SourceError::BadPassword { user, target },
            "3D000" => SourceError::NoDatabase {
                dbname: self.info.dbname.clone(),
                target,
            },
            "42501" if mode == Mode::Replication => {
                SourceError::NoReplicationPrivilege { user, target }
            }
            // pg_hba.conf has no "replication" line for this role/host.
            "28000"
                if mode == Mode::Replication && error.message.contains("replication") =>
            {
                SourceError::Db {
                    target,
                    error: Box::new(DbError {
                        hint: Some(format!(
                            "add a pg_hba.conf line for database \"replication\" (or the database name with replication=database on PG ≥ 10 uses the database line) for user {user}, and the role needs REPLICATION"
                        )),
                        ..error
                    }),
                }
            }
            _ => SourceError::Db {
                target,
                error: Box::new(error),
            },
        }
    }

    async fn scram(&mut self, password: &str) -> Result<(), SourceError> {
        // Channel binding is not offered ('n'): a server that also offers
        // SCRAM-SHA-256-PLUS accepts that, and we never claim support we lack.
        let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        frontend::sasl_initial_response(sasl::SCRAM_SHA_256, scram.message(), &mut self.write_buf)
            .map_err(|e| self.protocol(e.to_string()))?;
        self.flush().await?;
        match self.read_message().await? {
            Message::AuthenticationSaslContinue(body) => {
                scram
                    .update(body.data())
                    .map_err(|e| self.protocol(format!("SCRAM: {e}")))?;
            }
            Message::ErrorResponse(body) => {
                return Err(self.startup_error(db_error(&body), Mode::Normal))
            }
            _ => return Err(self.protocol("unexpected message in SCRAM exchange".into())),
        }
        frontend::sasl_response(scram.message(), &mut self.write_buf)
            .map_err(|e| self.protocol(e.to_string()))?;
        self.flush().await?;
        match self.read_message().await? {
            Message::AuthenticationSaslFinal(body) => scram
                .finish(body.data())
                .map_err(|e| self.protocol(format!("SCRAM server signature: {e}"))),
            Message::ErrorResponse(body) => Err(self.startup_error(db_error(&body), Mode::Normal)),
            _ => Err(self.protocol("unexpected message at the end of SCRAM".into())),
        }
    }

    fn password(&self) -> Result<String, SourceError> {
        self.info
            .password
            .clone()
            .ok_or_else(|| SourceError::NoPassword {
                user: self.info.user.clone(),
                target: self.target.clone(),
            })
    }

    pub(crate) fn protocol(&self, why: String) -> SourceError {
        SourceError::Protocol {
            target: self.target.clone(),
            why,
        }
    }

    /// `user@host:port/db` for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    pub fn info(&self) -> &ConnInfo {
        &self.info
    }

    /// A server parameter reported at startup (`server_version`, ...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// `server_version_num`-style number from the startup parameters
    /// (150004 for 15.4), 0 when unknown.
    pub fn server_version_num(&self) -> u32 {
        let v = self.parameter("server_version").unwrap_or("");
        let mut parts = v
            .split(|c: char| !c.is_ascii_digit())
            .filter(|p| !p.is_empty());
        let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if major >= 10 {
            major * 10000 + minor
        } else {
            major * 10000 + minor * 100
        }
    }

    pub(crate) async fn flush(&mut self) -> Result<(), SourceError> {
        if self.write_buf.is_empty() {
            return Ok(());
        }
        let buf = self.write_buf.split().freeze();
        self.stream
            .write_all(&buf)
            .await
            .map_err(|source| SourceError::Io {
                target: self.target.clone(),
                source,
            })?;
        self.stream.flush().await.map_err(|source| SourceError::Io {
            target: self.target.clone(),
            source,
        })
    }

    /// Reads the next backend message. Cancel-safe: a partially received
    /// message stays in the read buffer for the next call.
    pub(crate) async fn read_message(&mut self) -> Result<Message, SourceError> {
        loop {
            if let Some(m) = self.try_parse()? {
                return Ok(m);
            }
            self.read_more().await?;
        }
    }

    /// Reads what the server sent next into the read buffer; the server
    /// closing the connection is an error.
    pub(crate) async fn read_more(&mut self) -> Result<(), SourceError> {
        let n = self
            .stream
            .read_buf(&mut self.read_buf)
            .await
            .map_err(|source| SourceError::Io {
                target: self.target.clone(),
                source,
            })?;
        if n == 0 {
            return Err(SourceError::Closed {
                target: self.target.clone(),
            });
        }
        Ok(())
    }

    /// A complete message already buffered, if any (no I/O).
    ///
    /// postgres-protocol 0.6 does not know CopyBothResponse ('W'). Its body
    /// has exactly the layout of CopyOutResponse ('H'), and a connection
    /// streaming replication runs no COPY TO STDOUT, so 'W' is parsed as 'H'
    /// and [`Connection::start_copy_both`] treats `CopyOutResponse` as
    /// CopyBoth.
    pub(crate) fn try_parse(&mut self) -> Result<Option<Message>, SourceError> {
        if self.read_buf.capacity() - self.read_buf.len() < 8 * 1024 {
            self.read_buf.reserve(64 * 1024);
        }
        if let Some(tag) = self.read_buf.first_mut() {
            if *tag == b'W' {
                *tag = b'H';
            }
        }
        Message::parse(&mut self.read_buf).map_err(|e| self.protocol(e.to_string()))
    }

    /// Runs `sql` with the simple query protocol; one result per statement.
    /// A server error is returned after the connection is ready again.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<QueryResult>, SourceError> {
        frontend::query(sql, &mut self.write_buf).map_err(|e| self.protocol(e.to_string()))?;
        self.flush().await?;
        let mut results = Vec::new();
        let mut current = QueryResult::default();
        let mut error = None;
        loop {
            match self.read_message().await? {
                Message::RowDescription(body) => {
                    current.columns.clear();
                    let mut fields = body.fields();
                    while let Some(f) = fields.next().map_err(|e| self.protocol(e.to_string()))? {
                        current.columns.push(f.name().to_string());
                    }
                }
                Message::DataRow(body) => {
                    let buf = body.buffer();
                    let mut row = Vec::with_capacity(current.columns.len());
                    let mut ranges = body.ranges();
                    while let Some(r) = ranges.next().map_err(|e| self.protocol(e.to_string()))? {
                        row.push(r.map(|r| {
                            String::from_utf8_lossy(buf.get(r).unwrap_or_default()).into_owned()
                        }));
                    }
                    current.rows.push(row);
                }
                Message::CommandComplete(body) => {
                    current.tag = body.tag().unwrap_or("").to_string();
                    results.push(std::mem::take(&mut current));
                }
                Message::EmptyQueryResponse => {}
                Message::ErrorResponse(body) => error = Some(db_error(&body)),
                Message::NoticeResponse(_) | Message::ParameterStatus(_) => {}
                Message::ReadyForQuery(_) => break,
                Message::CopyOutResponse(_) | Message::CopyInResponse(_) => {
                    return Err(self.protocol("unexpected COPY in a simple query".into()))
                }
                _ => {}
            }
        }
        match error {
            Some(error) => Err(SourceError::Db {
                target: self.target.clone(),
                error: Box::new(error),
            }),
            None => Ok(results),
        }
    }

    /// Runs one statement and returns its (last) result.
    pub async fn query_one(&mut self, sql: &str) -> Result<QueryResult, SourceError> {
        Ok(self.simple_query(sql).await?.pop().unwrap_or_default())
    }

    /// Says goodbye politely; errors are irrelevant at this point.
    pub async fn close(mut self) {
        frontend::terminate(&mut self.write_buf);
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}

/// `'text'` as an SQL string literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `"name"` as an SQL identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}
