//! The way back, prepared on the new primary: a publication of the sink's
//! tables and a logical slot (pgoutput) created while writes are fenced,
//! after the new primary has every write of the old one. The slot's
//! consistent point then lies before the first write the new primary
//! takes, so a reverse pipeline started from it (`snapshot = "never"`)
//! misses nothing and brings nothing twice.
//!
//! Whatever this created is dropped again when the switchover is given
//! up, so both sides are left as they were.

use tokio_postgres::Client;

use super::db_message;
use crate::config::PostgresSinkSection;
use crate::pg::{ident, qualified};
use crate::sink::postgres::conn::MakeRustls;
use crate::Lsn;

pub struct Reverse {
    /// Catalog statements and the publication.
    client: Client,
    /// Creates the slot (a call that waits for the new primary's running
    /// transactions, and is cancelled when the pause is given up).
    slot_client: Client,
    sink: PostgresSinkSection,
    publication: String,
    slot: String,
    created_publication: bool,
    created_slot: bool,
}

impl Reverse {
    /// Connects to the new primary and checks that the way back can be
    /// made there: `wal_level = logical`, the sink's tables present, no
    /// slot or publication of those names yet.
    pub async fn prepare(
        sink: &PostgresSinkSection,
        publication: &str,
        slot: &str,
        tables: &[String],
    ) -> Result<Reverse, String> {
        let connect = || async {
            crate::pg::connect(&sink.url.info)
                .await
                .map_err(|e| format!("new primary (sink {}): {e}", sink.name))
        };
        let client = connect().await?;
        let slot_client = connect().await?;
        let e = |e: tokio_postgres::Error| {
            format!("new primary (sink {}): {}", sink.name, db_message(&e))
        };
        let row = client
            .query_one(
                "SELECT current_setting('wal_level'), pg_catalog.pg_is_in_recovery(), \
                 EXISTS (SELECT FROM pg_catalog.pg_replication_slots WHERE slot_name = $1), \
                 EXISTS (SELECT FROM pg_catalog.pg_publication WHERE pubname = $2)",
                &[&slot, &publication],
            )
            .await
            .map_err(e)?;
        let (wal_level, standby, has_slot, has_pub): (String, bool, bool, bool) = (
            row.try_get(0).map_err(e)?,
            row.try_get(1).map_err(e)?,
            row.try_get(2).map_err(e)?,
            row.try_get(3).map_err(e)?,
        );
        let name = &sink.name;
        if standby {
            return Err(format!(
                "new primary (sink {name}) is a standby: it cannot take writes"
            ));
        }
        if wal_level != "logical" {
            return Err(format!("new primary (sink {name}) has wal_level = {wal_level}: the way back needs a logical slot there; set wal_level = logical and restart it"));
        }
        if has_slot {
            return Err(format!("new primary (sink {name}) already has a replication slot {slot}: drop it (SELECT pg_drop_replication_slot('{slot}')) or set switchover.reverse_slot to another name"));
        }
        if has_pub {
            return Err(format!("new primary (sink {name}) already has a publication {publication}: drop it (DROP PUBLICATION {}) or set switchover.reverse_publication to another name", ident(publication)));
        }
        for t in tables {
            let found: bool = client
                .query_one(
                    "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
                    &[&quote(t)],
                )
                .await
                .and_then(|r| r.try_get(0))
                .map_err(e)?;
            if !found {
                return Err(format!("new primary (sink {name}) has no table {t}, which the sink takes: the way back could not bring its writes; create it"));
            }
        }
        Ok(Reverse {
            client,
            slot_client,
            sink: sink.clone(),
            publication: publication.to_string(),
            slot: slot.to_string(),
            created_publication: false,
            created_slot: false,
        })
    }

    /// `CREATE PUBLICATION` for `tables` (harmless before the fence:
    /// it decodes nothing until a slot reads it).
    pub async fn create_publication(&mut self, tables: &[String]) -> Result<(), String> {
        let list: Vec<String> = tables.iter().map(|t| quote(t)).collect();
        let sql = format!(
            "CREATE PUBLICATION {} FOR TABLE {}",
            ident(&self.publication),
            list.join(", ")
        );
        self.client.batch_execute(&sql).await.map_err(|e| {
            format!(
                "new primary (sink {}): creating publication {}: {}; the sink's user needs CREATE on the database and to own the tables (or be a superuser)",
                self.sink.name,
                self.publication,
                db_message(&e)
            )
        })?;
        self.created_publication = true;
        Ok(())
    }

    /// Creates the logical slot; returns its consistent point.
    pub async fn create_slot(&mut self) -> Result<Lsn, String> {
        let row = self
            .slot_client
            .query_one(
                "SELECT lsn::text FROM pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&self.slot],
            )
            .await
            .map_err(|e| {
                format!(
                    "new primary (sink {}): creating slot {}: {}; the sink's user needs the REPLICATION attribute (or superuser)",
                    self.sink.name,
                    self.slot,
                    db_message(&e)
                )
            })?;
        self.created_slot = true;
        let lsn: String = row.try_get(0).map_err(|e| e.to_string())?;
        lsn.parse()
            .map_err(|e| format!("slot {}: position {lsn:?}: {e}", self.slot))
    }

    /// Drops what was created (a slot still being created is cancelled
    /// first); one line per thing dropped, or the error with the statement
    /// to run by hand.
    pub async fn undo(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Ok(tls) = MakeRustls::new(&self.sink.url.info) {
            let _ = self.slot_client.cancel_token().cancel_query(tls).await;
        }
        match self.drop_slot().await {
            Ok(true) => lines.push(format!("reverse slot {} dropped", self.slot)),
            Ok(false) => {}
            Err(e) => lines.push(format!(
                "could not drop reverse slot {}: {e}; run on the new primary: SELECT pg_drop_replication_slot('{}')",
                self.slot, self.slot
            )),
        }
        if self.created_publication {
            let sql = format!("DROP PUBLICATION IF EXISTS {}", ident(&self.publication));
            match self.client.batch_execute(&sql).await {
                Ok(()) => {
                    self.created_publication = false;
                    lines.push(format!("reverse publication {} dropped", self.publication));
                }
                Err(e) => lines.push(format!(
                    "could not drop reverse publication {}: {}; run on the new primary: {sql}",
                    self.publication,
                    db_message(&e)
                )),
            }
        }
        lines
    }

    /// Drops the slot if it exists, waiting (a few seconds) for a creation
    /// being cancelled to let go of it. Whether there was one to drop.
    async fn drop_slot(&mut self) -> Result<bool, String> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let row = self
                .client
                .query_opt(
                    "SELECT active_pid FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
                    &[&self.slot],
                )
                .await
                .map_err(|e| db_message(&e))?;
            let Some(row) = row else {
                return Ok(false);
            };
            let active: Option<i32> = row.try_get(0).map_err(|e| e.to_string())?;
            if active.is_none() {
                self.client
                    .execute(
                        "SELECT pg_catalog.pg_drop_replication_slot($1)",
                        &[&self.slot],
                    )
                    .await
                    .map_err(|e| db_message(&e))?;
                self.created_slot = false;
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "it is still in use by process {}",
                    active.unwrap_or(0)
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    pub fn slot_created(&self) -> bool {
        self.created_slot
    }
}

/// `schema.table` (as the config names tables) quoted.
fn quote(t: &str) -> String {
    match t.split_once('.') {
        Some((s, n)) => qualified(s, n),
        None => qualified("public", t),
    }
}
