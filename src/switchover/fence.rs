//! Holding writes to the old primary while the new one catches up, and
//! letting them go again: to the old primary when the switchover is given
//! up, to the new one (after `repoint`) when it succeeded.
//!
//! - PgBouncer: `PAUSE` lets running transactions finish and holds every
//!   client's next one inside PgBouncer; nothing fails. Letting go to the
//!   new primary is `RELOAD` (the repointed `pgbouncer.ini`), `RECONNECT`
//!   (no pooled server connection to the old primary is used again;
//!   `PAUSE` has closed them already), then `RESUME`. A client that
//!   connected during the pause after the `RELOAD` made the pool's login
//!   fail, and PgBouncer would wait `server_login_retry` (15 s by default)
//!   before it tries again, stalling every client (PgBouncer issue #498):
//!   the setting is 0 around the `RESUME` and put back after.
//! - read_only: `ALTER SYSTEM SET default_transaction_read_only = on` and a
//!   reload: new transactions on the old primary are read-only (writes in
//!   them fail); transactions that began before are waited for a short
//!   while, then their sessions are terminated. `ALTER SYSTEM RESET` undoes
//!   it either way: the way back writes into the old primary.

use std::time::Duration;

use tokio_postgres::Client;

use super::pgbouncer::Admin;
use crate::config::switchover::SwitchoverConfig;
use crate::config::Url;

/// A fence ready to be engaged (its connections made beforehand, so that
/// the pause does not wait for them).
pub enum Fence {
    Pgbouncer(Box<Pgbouncer>),
    ReadOnly(ReadOnly),
}

pub struct Pgbouncer {
    /// Free for every command but `PAUSE`.
    ctl: Admin,
    /// Sends `PAUSE`, which may block it.
    pauser: Option<Admin>,
    databases: Vec<String>,
}

pub struct ReadOnly {
    /// A session on the old primary (superuser, or granted ALTER SYSTEM).
    src: Client,
    /// How long transactions begun before the fence may take to end.
    grace: Duration,
}

impl Fence {
    /// Connects and checks what the fence needs, changing nothing.
    pub async fn prepare(sw: &SwitchoverConfig, source: &Url) -> Result<Fence, String> {
        match &sw.pgbouncer {
            Some(url) => {
                let ctl = Admin::connect(url).await?;
                ctl.check_databases(&sw.databases).await?;
                ctl.setting("server_login_retry").await?;
                let pauser = Some(Admin::connect(url).await?);
                Ok(Fence::Pgbouncer(Box::new(Pgbouncer {
                    ctl,
                    pauser,
                    databases: sw.databases.clone(),
                })))
            }
            None => {
                let src = crate::pg::connect(&source.info)
                    .await
                    .map_err(|e| format!("old primary: {e}"))?;
                let on: String = src
                    .query_one(
                        "SELECT current_setting('default_transaction_read_only')",
                        &[],
                    )
                    .await
                    .and_then(|r| r.try_get(0))
                    .map_err(|e| format!("old primary: {e}"))?;
                if on != "off" {
                    return Err("the old primary's default_transaction_read_only is already on: fence = \"read_only\" would turn it off at the end; set it off first, or use another fence".into());
                }
                // Half the pause for running transactions, at most 5 s.
                let grace = Duration::from_secs_f64((sw.max_pause_secs / 2.0).min(5.0));
                Ok(Fence::ReadOnly(ReadOnly { src, grace }))
            }
        }
    }

    /// Holds writes; returns what it did, for the step's line.
    pub async fn engage(&mut self) -> Result<String, String> {
        match self {
            Fence::Pgbouncer(p) => {
                let pauser = p
                    .pauser
                    .as_ref()
                    .ok_or("the PgBouncer pause connection is gone")?;
                for db in &p.databases {
                    pauser.command(&format!("PAUSE {db}")).await?;
                }
                Ok(format!("PAUSE {}", p.databases.join(", ")))
            }
            Fence::ReadOnly(r) => r.engage().await,
        }
    }

    /// Lets writes go on at the old primary (the switchover was given up).
    pub async fn release_to_old(&mut self) -> Result<String, String> {
        match self {
            Fence::Pgbouncer(p) => {
                // A PAUSE still waiting goes with its connection; the
                // pause itself ends with RESUME.
                p.pauser = None;
                p.resume(false).await
            }
            Fence::ReadOnly(r) => r.release().await,
        }
    }

    /// Lets writes go on at the new primary (after `repoint`).
    pub async fn release_to_new(&mut self) -> Result<String, String> {
        match self {
            Fence::Pgbouncer(p) => {
                p.pauser = None;
                p.resume(true).await
            }
            Fence::ReadOnly(r) => r.release().await,
        }
    }

    /// What to run by hand when releasing failed.
    pub fn manual_release(&self) -> String {
        match self {
            Fence::Pgbouncer(p) => format!(
                "in PgBouncer's admin console ({}): {}",
                p.ctl.shown,
                p.databases
                    .iter()
                    .map(|d| format!("RESUME {d};"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Fence::ReadOnly(_) => "on the old primary: ALTER SYSTEM RESET default_transaction_read_only; SELECT pg_reload_conf();".into(),
        }
    }
}

impl Pgbouncer {
    /// `RESUME` of every database, with `RELOAD` and `RECONNECT` first
    /// when `reload`, and `server_login_retry` 0 around it.
    async fn resume(&self, reload: bool) -> Result<String, String> {
        let mut done = Vec::new();
        if reload {
            self.ctl.command("RELOAD").await?;
            // Where each database points now (a repoint through DNS
            // leaves the same host name).
            let rows = self.ctl.show("DATABASES").await?;
            let field = |r: &std::collections::BTreeMap<String, String>, k: &str| {
                r.get(k).cloned().unwrap_or_default()
            };
            let targets: Vec<String> = rows
                .iter()
                .filter(|r| self.databases.contains(&field(r, "name")))
                .map(|r| {
                    format!(
                        "{} at {}:{}/{}",
                        field(r, "name"),
                        field(r, "host"),
                        field(r, "port"),
                        field(r, "database")
                    )
                })
                .collect();
            done.push(format!("RELOAD ({})", targets.join(", ")));
        }
        // Read after the RELOAD: what pgbouncer.ini says now.
        let retry = self.ctl.setting("server_login_retry").await?;
        self.ctl.command("SET server_login_retry = 0").await?;
        let mut failed = Vec::new();
        for db in &self.databases {
            if reload {
                match self.ctl.command(&format!("RECONNECT {db}")).await {
                    Ok(()) => done.push(format!("RECONNECT {db}")),
                    Err(e) => failed.push(e),
                }
            }
            match self.ctl.command(&format!("RESUME {db}")).await {
                Ok(()) => done.push(format!("RESUME {db}")),
                // Not paused (the PAUSE never got there): nothing to do.
                Err(e) if e.contains("not paused") => {}
                Err(e) => failed.push(e),
            }
        }
        let restore = self
            .ctl
            .command(&format!("SET server_login_retry = {}", literal(&retry)))
            .await;
        if let Err(e) = restore {
            failed.push(format!(
                "{e} (server_login_retry stays 0 until the next RELOAD)"
            ));
        }
        match failed.is_empty() {
            true => Ok(done.join(", ")),
            false => Err(failed.join("; ")),
        }
    }
}

/// A console value: bare when it is a number, else quoted.
fn literal(v: &str) -> String {
    match v.chars().all(|c| c.is_ascii_digit() || c == '.') && !v.is_empty() {
        true => v.to_string(),
        false => crate::pg::literal(v),
    }
}

impl ReadOnly {
    async fn engage(&self) -> Result<String, String> {
        let e = |e: tokio_postgres::Error| format!("old primary: {}", super::db_message(&e));
        self.src
            .batch_execute("ALTER SYSTEM SET default_transaction_read_only = on")
            .await
            .map_err(|err| {
                format!(
                    "{}; fence = \"read_only\" needs a superuser (or GRANT ALTER SYSTEM ON PARAMETER default_transaction_read_only) as the source user",
                    e(err)
                )
            })?;
        self.src
            .batch_execute("SELECT pg_catalog.pg_reload_conf()")
            .await
            .map_err(e)?;
        // Every session takes the setting at its next command once the
        // reload's signal reached it; transactions begun before then can
        // still write.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let open = "SELECT pid FROM pg_catalog.pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_catalog.pg_backend_pid() \
               AND xact_start < $1::text::timestamptz AND state <> 'idle'";
        let since: String = self
            .src
            .query_one("SELECT clock_timestamp()::text", &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(e)?;
        let deadline = tokio::time::Instant::now() + self.grace;
        loop {
            let pids: Vec<i32> = self
                .src
                .query(open, &[&since])
                .await
                .map_err(e)?
                .iter()
                .filter_map(|r| r.try_get(0).ok())
                .collect();
            if pids.is_empty() {
                return Ok("default_transaction_read_only = on".into());
            }
            if tokio::time::Instant::now() >= deadline {
                for pid in &pids {
                    self.src
                        .execute("SELECT pg_catalog.pg_terminate_backend($1)", &[pid])
                        .await
                        .map_err(e)?;
                }
                return Ok(format!(
                    "default_transaction_read_only = on, {} session(s) still in a transaction begun before it terminated",
                    pids.len()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn release(&self) -> Result<String, String> {
        let e = |e: tokio_postgres::Error| format!("old primary: {}", super::db_message(&e));
        self.src
            .batch_execute("ALTER SYSTEM RESET default_transaction_read_only")
            .await
            .map_err(e)?;
        self.src
            .batch_execute("SELECT pg_catalog.pg_reload_conf()")
            .await
            .map_err(e)?;
        Ok("ALTER SYSTEM RESET default_transaction_read_only".into())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn console_values_are_bare_numbers_or_quoted() {
        assert_eq!(super::literal("15"), "15");
        assert_eq!(super::literal("2.5"), "2.5");
        assert_eq!(super::literal("it's"), "'it''s'");
        assert_eq!(super::literal(""), "''");
    }
}
