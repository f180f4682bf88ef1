//! The target connection: a `tokio_postgres` client built from our
//! [`ConnInfo`], with TLS through rustls (the same configuration as the
//! source connection, so `sslmode` and `sslrootcert` mean the same on both
//! sides), and the session settings the sink relies on.
//!
//! TLS is plugged into tokio-postgres with a small adapter over
//! `tokio-rustls` instead of another crate: it reuses the source's verifier
//! setup (libpq's prefer/require/verify-ca/verify-full) and adds no
//! dependency. It offers no channel binding, so SCRAM runs without
//! `-PLUS`, as it does with libpq when the server's certificate is unknown.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres::Client;

use super::config::{ReplicationOrigin, ReplicationRole, SessionOrigin};
use super::error::{classify, ApplyError, Context as ErrCtx};
use crate::source::conninfo::{connect_first, describe_refusals, Refusal, SessionState};
use crate::source::{ConnInfo, SslMode};

/// Connects to the target and applies the session settings:
/// `synchronous_commit = on` (COMMIT returns only once durable, which is
/// what an acknowledgement promises) and no idle-in-transaction timeout (a
/// target transaction stays open while a long source transaction streams
/// in).
///
/// With several hosts (or `target_session_attrs`) the hosts are tried in
/// order, as libpq does, and the first whose session type fits is kept:
/// source clients (catalog reads, the copy, the pipeline lock) follow the
/// primary that way.
pub async fn connect(info: &ConnInfo) -> Result<Client, ApplyError> {
    if !info.is_multi_host() && !info.checks_session() {
        return connect_one(info).await;
    }
    connect_first(info, |one, check| async move {
        let client = connect_one(&one).await?;
        let state = match check {
            false => None,
            true => {
                let row = client
                    .query_one(
                        "SELECT pg_catalog.pg_is_in_recovery(), \
                         pg_catalog.current_setting('transaction_read_only') = 'on'",
                        &[],
                    )
                    .await
                    .map_err(|e| classify(e, &ErrCtx::new("asking the server whether it is a standby")))?;
                let get = |i| {
                    row.try_get::<_, bool>(i).map_err(|e| {
                        ApplyError::transient(format!("reading pg_is_in_recovery() from {one}: {e}"))
                            .with_cause(e)
                    })
                };
                Some(SessionState {
                    in_recovery: get(0)?,
                    read_only: get(1)?,
                })
            }
        };
        Ok::<_, ApplyError>((client, state))
    })
    .await
    .map_err(|refused| {
        let message = format!(
            "no host of {info} is usable with target_session_attrs={}: {}; check that the primary runs (after a failover: that a standby was promoted)",
            info.session_attrs().name(),
            describe_refusals(&refused)
        );
        let definite = refused
            .iter()
            .any(|(_, r)| matches!(r, Refusal::Failed(e) if !e.is_transient()));
        match definite {
            true => ApplyError::definite(message),
            false => ApplyError::transient(message),
        }
    })
}

async fn connect_one(info: &ConnInfo) -> Result<Client, ApplyError> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&info.host)
        .port(info.port)
        .user(&info.user)
        .dbname(&info.dbname)
        .application_name(info.application_name.as_deref().unwrap_or("pgbridge"))
        .ssl_mode(match info.sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
    if let Some(pw) = &info.password {
        cfg.password(pw);
    }
    if let Some(t) = info.connect_timeout {
        cfg.connect_timeout(t);
    }
    let tls = MakeRustls::new(info)?;
    let ctx = ErrCtx::new("connecting to the server");
    let (client, connection) = cfg
        .connect(tls)
        .await
        .map_err(|e| classify(e, &ctx).with_note(&info.to_string()))?;
    let target = info.to_string();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(target_db = %target, error = %e, "target connection ended");
        }
    });
    client
        .batch_execute(&format!(
            "SET synchronous_commit = on; \
             SET idle_in_transaction_session_timeout = 0; \
             SET statement_timeout = 0; {}",
            crate::pg::TRANSACTION_TIMEOUT_OFF
        ))
        .await
        .map_err(|e| classify(e, &ErrCtx::new("setting up the target session")))?;
    Ok(client)
}

/// [`connect`], then the session's `session_replication_role` per `role`
/// and its replication origin per `origin`. Every connection that writes
/// replicated rows (apply, parallel workers, the initial copy) comes from
/// here.
pub async fn connect_target(
    info: &ConnInfo,
    role: ReplicationRole,
    origin: &SessionOrigin,
) -> Result<Client, ApplyError> {
    let client = connect(info).await?;
    set_role(&client, info, role).await?;
    set_origin(&client, info, origin).await?;
    Ok(client)
}

async fn set_role(
    client: &Client,
    info: &ConnInfo,
    role: ReplicationRole,
) -> Result<(), ApplyError> {
    if role == ReplicationRole::Origin {
        return Ok(());
    }
    match client
        .batch_execute("SET session_replication_role = replica")
        .await
    {
        Ok(()) => {
            once(&info.to_string(), || {
                tracing::info!(target_db = %info, "target sessions run as session_replication_role = replica: the target's ordinary triggers and foreign-key checks do not fire for replicated rows");
            });
            Ok(())
        }
        Err(e) if role == ReplicationRole::Auto && is_denied(&e) => {
            once(&info.to_string(), || {
                tracing::warn!(
                    target_db = %info,
                    user = %info.user,
                    "the target user may not set session_replication_role = replica: the target's triggers and foreign-key checks fire for replicated rows (superuser or GRANT SET ON PARAMETER session_replication_role turns them off, as in PostgreSQL's own subscriptions)"
                );
            });
            Ok(())
        }
        Err(e) if is_denied(&e) => Err(ApplyError::definite(format!(
            "target user {} may not set session_replication_role = replica ({info}); make it a superuser, run GRANT SET ON PARAMETER session_replication_role TO {} (PostgreSQL 15+), or set session_replication_role = \"origin\" for the sink (the target's triggers and foreign keys then fire for replicated rows)",
            info.user,
            crate::pg::ident(&info.user)
        ))),
        Err(e) => Err(classify(
            e,
            &ErrCtx::new("setting session_replication_role on the target"),
        )),
    }
}

/// Sets the session up to commit under origin `origin.name` (created
/// when missing), so that the transactions it commits carry that origin in
/// the WAL and pgoutput sends an Origin message with them. An origin serves
/// one session at a time: while another session holds it (one this
/// session replaces that has not ended yet, or a sink of the same names
/// writing into another database of the cluster), `<name>~1`, `~2`, ...
/// are tried in turn.
async fn set_origin(
    client: &Client,
    info: &ConnInfo,
    origin: &SessionOrigin,
) -> Result<(), ApplyError> {
    if origin.mode == ReplicationOrigin::Off {
        return Ok(());
    }
    let mut name = origin.name.clone();
    let mut tries = 0;
    let result = loop {
        match setup_origin(client, &name).await {
            Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) && tries < ORIGIN_ALTERNATIVES => {
                tries += 1;
                name = format!("{}~{tries}", origin.name);
            }
            Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) => {
                return Err(ApplyError::transient(format!(
                    "replication origins {}~1 to ~{ORIGIN_ALTERNATIVES} on {info} are all in use by other sessions: {e}",
                    origin.name
                ))
                .with_cause(e));
            }
            result => break result,
        }
    };
    let full =
        |e: &tokio_postgres::Error| e.code() == Some(&SqlState::CONFIGURATION_LIMIT_EXCEEDED);
    match result {
        Ok(()) => {
            once(&format!("origin {info}"), || {
                tracing::info!(target_db = %info, origin = %name, "target sessions apply under replication origins (pgbridge_*): a pipeline reading this database skips what they write (its source.origin)");
            });
            Ok(())
        }
        Err(e) if origin.mode == ReplicationOrigin::Auto && (is_denied(&e) || full(&e)) => {
            once(&format!("no origin {info}"), || {
                tracing::warn!(
                    target_db = %info,
                    user = %info.user,
                    error = %e,
                    "the target session cannot set up a replication origin: replicated rows are written without one, so a pipeline reading this database (the way back) sends them on again ({}; each session's origin takes one of the target's max_replication_slots)",
                    origin_grants(&info.user)
                );
            });
            Ok(())
        }
        Err(e) if is_denied(&e) => Err(ApplyError::definite(format!(
            "target user {} may not set up replication origin {name} ({info}); {}, or set replication_origin = \"off\" for the sink (a pipeline reading this database then sends the rows it writes on again)",
            info.user,
            origin_grants(&info.user)
        ))),
        Err(e) if full(&e) => Err(ApplyError::definite(format!(
            "replication origin {name} on {info}: {e}; each target session of a sink takes one of the target's max_replication_slots for its origin (the apply session, each apply worker and copy connection): raise max_replication_slots on the target, drop pgbridge_* origins no longer used (pg_replication_origin_drop), or set replication_origin = \"off\" or \"auto\""
        ))),
        Err(e) => Err(classify(
            e,
            &ErrCtx::new("setting up the replication origin on the target"),
        )),
    }
}

/// How many other names ([`set_origin`]) a session tries when its
/// origin is in use.
const ORIGIN_ALTERNATIVES: usize = 8;

/// Creates origin `name` when missing and sets the session up with it.
async fn setup_origin(client: &Client, name: &str) -> Result<(), tokio_postgres::Error> {
    let known = client
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_replication_origin WHERE roname = $1",
            &[&name],
        )
        .await?;
    if known.is_none() {
        let created = client
            .execute(
                "SELECT pg_catalog.pg_replication_origin_create($1)",
                &[&name],
            )
            .await;
        match created {
            // Another session of the sink created it meanwhile.
            Err(e)
                if e.code() == Some(&SqlState::DUPLICATE_OBJECT)
                    || e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {}
            r => {
                r?;
            }
        }
    }
    client
        .execute(
            "SELECT pg_catalog.pg_replication_origin_session_setup($1)",
            &[&name],
        )
        .await?;
    Ok(())
}

/// What lets `user` set up a replication origin.
pub fn origin_grants(user: &str) -> String {
    let user = crate::pg::ident(user);
    format!(
        "make it a superuser, or run GRANT EXECUTE ON FUNCTION pg_catalog.pg_replication_origin_create(text), pg_catalog.pg_replication_origin_session_setup(text) TO {user}"
    )
}

fn is_denied(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|d| d.code() == &tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
}

/// Runs `log` once per `key` (what and which target) and process: every apply, worker and copy
/// session connects through here, the log says it once.
fn once(key: &str, log: impl FnOnce()) {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let key = key.to_string();
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if !seen.contains(&key) {
        log();
        seen.push(key);
    }
}

/// Makes rustls connectors for tokio-postgres.
#[derive(Clone)]
pub struct MakeRustls {
    config: Arc<rustls::ClientConfig>,
}

impl MakeRustls {
    /// The connector for `info.sslmode` (unused with `disable`).
    pub fn new(info: &ConnInfo) -> Result<Self, ApplyError> {
        let config = crate::source::tls::client_config(info)
            .map_err(|why| ApplyError::definite(format!("TLS setup for {info} failed: {why}")))?;
        Ok(MakeRustls {
            config: Arc::new(config),
        })
    }
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, io::Error> {
        let name = crate::source::tls::server_name(domain).map_err(io::Error::other)?;
        Ok(RustlsConnect {
            config: self.config.clone(),
            name,
        })
    }
}

/// One TLS handshake.
pub struct RustlsConnect {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let connector = tokio_rustls::TlsConnector::from(self.config);
            let tls = connector.connect(self.name, stream).await?;
            Ok(RustlsStream(tls))
        })
    }
}

/// A TLS session with the target.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}
