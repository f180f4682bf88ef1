//! PgBouncer's admin console, as the switchover uses it.
//!
//! The console speaks the simple query protocol only and knows none of a
//! server's session settings, so the connection is made without any
//! `SET` at its start (unlike [`crate::pg::connect`]) and every command
//! goes through `simple_query`. tokio-postgres sends `user`, `database`
//! and `client_encoding` as startup parameters, all of which PgBouncer
//! takes with a default `pgbouncer.ini` (no `ignore_startup_parameters`
//! needed).
//!
//! `PAUSE` answers only once every server connection of the database is
//! released (running transactions ended), so it runs on a connection of
//! its own: the other one stays free to `RESUME` when the pause takes too
//! long or the operator interrupts.

use std::collections::BTreeMap;

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::config::Url;
use crate::sink::postgres::conn::MakeRustls;
use crate::source::SslMode;

/// One admin console connection.
pub struct Admin {
    client: Client,
    /// The console, for messages (no password).
    pub shown: String,
}

impl Admin {
    pub async fn connect(url: &Url) -> Result<Admin, String> {
        let info = &url.info;
        let shown = format!("PgBouncer admin console {info}");
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&info.host)
            .port(info.port)
            .user(&info.user)
            .dbname(&info.dbname)
            .connect_timeout(
                info.connect_timeout
                    .unwrap_or(std::time::Duration::from_secs(10)),
            )
            .ssl_mode(match info.sslmode {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                _ => tokio_postgres::config::SslMode::Require,
            });
        if let Some(pw) = &info.password {
            cfg.password(pw);
        }
        let tls = MakeRustls::new(info).map_err(|e| format!("{shown}: {e}"))?;
        let (client, connection) = cfg.connect(tls).await.map_err(|e| {
            format!(
                "cannot connect to the {shown}: {}; check switchover.pgbouncer, and that its user is listed in admin_users of pgbouncer.ini",
                message(&e)
            )
        })?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Admin { client, shown })
    }

    /// Runs one console command (`PAUSE app`, `RELOAD`, ...).
    pub async fn command(&self, sql: &str) -> Result<(), String> {
        self.client
            .simple_query(sql)
            .await
            .map(|_| ())
            .map_err(|e| format!("{}: {sql}: {}", self.shown, message(&e)))
    }

    /// The rows of a `SHOW` command, each as column name -> value.
    pub async fn show(&self, what: &str) -> Result<Vec<BTreeMap<String, String>>, String> {
        let sql = format!("SHOW {what}");
        let messages = self
            .client
            .simple_query(&sql)
            .await
            .map_err(|e| format!("{}: {sql}: {}", self.shown, message(&e)))?;
        Ok(messages
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(
                    r.columns()
                        .iter()
                        .enumerate()
                        .map(|(i, c)| {
                            (
                                c.name().to_string(),
                                r.get(i).unwrap_or_default().to_string(),
                            )
                        })
                        .collect(),
                ),
                _ => None,
            })
            .collect())
    }

    /// A setting's value as `SHOW CONFIG` gives it.
    pub async fn setting(&self, key: &str) -> Result<String, String> {
        self.show("CONFIG")
            .await?
            .into_iter()
            .find(|r| r.get("key").map(String::as_str) == Some(key))
            .and_then(|mut r| r.remove("value"))
            .ok_or_else(|| format!("{}: SHOW CONFIG has no {key}", self.shown))
    }

    /// Checks that each of `databases` is configured in PgBouncer.
    pub async fn check_databases(&self, databases: &[String]) -> Result<(), String> {
        let rows = self.show("DATABASES").await?;
        let known: Vec<&str> = rows
            .iter()
            .filter_map(|r| r.get("name").map(String::as_str))
            .filter(|n| *n != "pgbouncer")
            .collect();
        match databases.iter().find(|d| !known.contains(&d.as_str())) {
            Some(d) => Err(format!(
                "switchover.databases: PgBouncer has no database {d:?} ({}); it has: {}",
                self.shown,
                known.join(", ")
            )),
            None => Ok(()),
        }
    }
}

fn message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => d.message().to_string(),
        None => e.to_string(),
    }
}
