//! SQL sessions on the bench's clusters, and the check that a target ended
//! equal to its source.

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::R;

/// One session (tokio-postgres, simple query protocol).
pub struct Db {
    client: Client,
    name: String,
}

impl Db {
    /// A session on `url`.
    pub async fn connect(url: &str) -> R<Db> {
        let (client, conn) = tokio_postgres::connect(url, NoTls)
            .await
            .map_err(|e| format!("cannot connect to {url}: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Db {
            client,
            name: url.to_string(),
        })
    }

    /// Runs `sql` (one or more statements).
    pub async fn exec(&self, sql: &str) -> R<()> {
        self.client
            .batch_execute(sql)
            .await
            .map_err(|e| format!("{sql}\n  on {}: {}", self.name, error_text(&e)))
    }

    /// All rows, every column as text (NULL as None).
    pub async fn rows(&self, sql: &str) -> R<Vec<Vec<Option<String>>>> {
        let msgs = self
            .client
            .simple_query(sql)
            .await
            .map_err(|e| format!("{sql}\n  on {}: {}", self.name, error_text(&e)))?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                }
                _ => None,
            })
            .collect())
    }

    /// The first column of the first row, which must exist and not be NULL.
    pub async fn value(&self, sql: &str) -> R<String> {
        self.rows(sql)
            .await?
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten())
            .ok_or_else(|| format!("{sql}\n  on {}: no value", self.name))
    }

    /// The first value of the first row as a number.
    pub async fn number<T: std::str::FromStr>(&self, sql: &str) -> R<T> {
        let v = self.value(sql).await?;
        v.parse()
            .map_err(|_| format!("{sql}\n  on {}: {v:?} is not a number", self.name))
    }
}

fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{}: {}", d.severity(), d.message()),
        None => e.to_string(),
    }
}

/// Row count and a checksum over the columns `id, a, b, c, d`.
async fn checksum(db: &Db, table: &str) -> R<String> {
    db.value(&format!(
        "SELECT count(*)::text || ' rows, sum ' || \
         coalesce(sum(hashtext(concat_ws('|', id, a, b, extract(epoch FROM c), d))), 0)::text \
         FROM {table}"
    ))
    .await
}

/// Whether `table` holds the same rows on the target as on the source.
pub async fn verify(src: &Db, tgt: &Db, table: &str) -> R<()> {
    let (s, t) = (checksum(src, table).await?, checksum(tgt, table).await?);
    if s == t {
        Ok(())
    } else {
        Err(format!("target differs: source {s}, target {t}"))
    }
}
