//! Looks up non-builtin column types (enums, domains, arrays of them,
//! extension types) in `pg_type` over a normal connection, so that the
//! change model can decode them. pgoutput's Relation message names only type
//! OIDs, and its Type message only namespace and name, not the kind.

use crate::model::{TypeInfo, TypeRegistry};

use super::conn::{Connection, Mode};
use super::conninfo::ConnInfo;
use super::error::SourceError;

/// Resolves type OIDs, connecting lazily on first need.
pub struct TypeResolver {
    info: ConnInfo,
    conn: Option<Connection>,
}

/// Domains over arrays over domains...: deeper than this is treated as opaque.
const MAX_DEPTH: u32 = 8;

impl TypeResolver {
    pub fn new(info: ConnInfo) -> Self {
        TypeResolver { info, conn: None }
    }

    /// Makes sure every OID in `oids` is in `registry`.
    pub async fn resolve(
        &mut self,
        registry: &mut TypeRegistry,
        oids: &[u32],
    ) -> Result<(), SourceError> {
        for &oid in oids {
            let info = self.lookup(registry, oid, 0).await?;
            registry.insert(info);
        }
        Ok(())
    }

    fn lookup<'a>(
        &'a mut self,
        registry: &'a mut TypeRegistry,
        oid: u32,
        depth: u32,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<TypeInfo, SourceError>> + Send + 'a>,
    > {
        Box::pin(async move {
            if let Some(t) = registry.get(oid) {
                return Ok(t);
            }
            if depth > MAX_DEPTH {
                return Ok(TypeInfo::other(oid, "unknown"));
            }
            if self.conn.is_none() {
                self.conn = Some(Connection::connect(&self.info, Mode::Normal).await?);
            }
            let Some(conn) = self.conn.as_mut() else {
                return Ok(TypeInfo::other(oid, "unknown"));
            };
            let r = match conn
                .query_one(&format!(
                    "SELECT typtype, typname, typbasetype, typelem, typcategory \
                     FROM pg_catalog.pg_type WHERE oid = {oid}"
                ))
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    self.conn = None; // reconnect next time
                    return Err(e);
                }
            };
            if r.rows.is_empty() {
                // Dropped meanwhile: its text form still passes through.
                return Ok(TypeInfo::other(oid, "unknown"));
            }
            let typtype = r
                .get(0, "typtype")
                .and_then(|s| s.chars().next())
                .unwrap_or('b');
            let typname = r.get(0, "typname").unwrap_or("unknown").to_string();
            let base_oid: u32 = r
                .get(0, "typbasetype")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let elem_oid: u32 = r
                .get(0, "typelem")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let is_array = r.get(0, "typcategory") == Some("A") && elem_oid != 0;
            let base = if typtype == 'd' && base_oid != 0 {
                Some(self.lookup(registry, base_oid, depth + 1).await?)
            } else {
                None
            };
            let elem = if is_array {
                Some(self.lookup(registry, elem_oid, depth + 1).await?)
            } else {
                None
            };
            Ok(TypeInfo::from_catalog(oid, typtype, &typname, base, elem))
        })
    }
}
