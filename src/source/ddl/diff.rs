//! What changed between two definitions of one table, by column number
//! (attnum) and index name, in the order a target applies it: the table's
//! name first (later statements use the new one), then columns dropped,
//! renamed, retyped and added, then indexes dropped and created.
//! Partitions attached and detached are reported, not applied.

use super::{ColumnDef, TableDef};

/// One change of a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// `ALTER TABLE ... RENAME TO` / `SET SCHEMA`.
    RenameTable {
        from: (String, String),
        to: (String, String),
    },
    RenameColumn {
        from: String,
        to: String,
    },
    DropColumn {
        name: String,
    },
    /// `ALTER COLUMN ... TYPE`; `to` is the new column.
    AlterType {
        from: String,
        to: ColumnDef,
    },
    AddColumn {
        column: ColumnDef,
    },
    DropIndex {
        name: String,
    },
    CreateIndex {
        name: String,
        definition: String,
    },
    AttachPartition {
        partition: String,
    },
    DetachPartition {
        partition: String,
    },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::RenameTable { from, to } => {
                write!(f, "rename table {}.{} to {}.{}", from.0, from.1, to.0, to.1)
            }
            Change::RenameColumn { from, to } => write!(f, "rename column {from} to {to}"),
            Change::DropColumn { name } => write!(f, "drop column {name}"),
            Change::AlterType { from, to } => {
                write!(f, "column {} type {from} -> {}", to.name, to.type_sql)
            }
            Change::AddColumn { column } => {
                write!(f, "add column {} {}", column.name, column.type_sql)
            }
            Change::DropIndex { name } => write!(f, "drop index {name}"),
            Change::CreateIndex { name, .. } => write!(f, "create index {name}"),
            Change::AttachPartition { partition } => write!(f, "attach partition {partition}"),
            Change::DetachPartition { partition } => write!(f, "detach partition {partition}"),
        }
    }
}

/// The changes from `old` to `new` (see the module documentation).
pub fn diff(old: &TableDef, new: &TableDef) -> Vec<Change> {
    let mut out = Vec::new();
    if (&old.schema, &old.name) != (&new.schema, &new.name) {
        out.push(Change::RenameTable {
            from: (old.schema.clone(), old.name.clone()),
            to: (new.schema.clone(), new.name.clone()),
        });
    }
    // Drops before renames: a column may take the name of one dropped.
    for o in &old.columns {
        if new.column(o.attnum).is_none() {
            out.push(Change::DropColumn {
                name: o.name.clone(),
            });
        }
    }
    for o in &old.columns {
        if let Some(n) = new.column(o.attnum).filter(|n| n.name != o.name) {
            out.push(Change::RenameColumn {
                from: o.name.clone(),
                to: n.name.clone(),
            });
        }
    }
    for o in &old.columns {
        if let Some(n) = new.column(o.attnum) {
            if (n.type_oid, n.typmod) != (o.type_oid, o.typmod) {
                out.push(Change::AlterType {
                    from: o.type_sql.clone(),
                    to: n.clone(),
                });
            }
        }
    }
    for n in &new.columns {
        if old.column(n.attnum).is_none() {
            out.push(Change::AddColumn { column: n.clone() });
        }
    }
    let own = |t: &TableDef| -> Vec<(String, String)> {
        t.indexes
            .iter()
            .filter(|i| !i.constraint)
            .map(|i| (i.name.clone(), i.definition.clone()))
            .collect()
    };
    let (old_ix, new_ix) = (own(old), own(new));
    for (name, _) in &old_ix {
        if !new_ix.iter().any(|(n, _)| n == name) {
            out.push(Change::DropIndex { name: name.clone() });
        }
    }
    for (name, definition) in &new_ix {
        if !old_ix.iter().any(|(n, _)| n == name) {
            out.push(Change::CreateIndex {
                name: name.clone(),
                definition: definition.clone(),
            });
        }
    }
    for p in &new.partitions {
        if !old.partitions.contains(p) {
            out.push(Change::AttachPartition {
                partition: p.clone(),
            });
        }
    }
    for p in &old.partitions {
        if !new.partitions.contains(p) {
            out.push(Change::DetachPartition {
                partition: p.clone(),
            });
        }
    }
    out
}
