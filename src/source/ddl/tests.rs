use super::*;

/// Two messages as PostgreSQL 15's event trigger wrote them: a column
/// renamed, then one added with a default (one client string holding both
/// statements).
const MESSAGES: &str = include_str!("testdata/messages.jsonl");

fn messages() -> Vec<DdlMessage> {
    MESSAGES
        .lines()
        .map(|l| DdlMessage::parse(l.as_bytes()).expect("parses"))
        .collect()
}

#[test]
fn parses_the_triggers_messages() {
    let m = messages();
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].command_tag, "ALTER TABLE");
    assert_eq!(m[0].new.qualified_name(), "public.u");
    assert_eq!(m[0].rel_id(), m[1].rel_id());
    assert!(m[0].statement.as_deref().is_some_and(|s| s.contains(';')));
    assert_eq!(
        m[0].changes(),
        vec![Change::RenameColumn {
            from: "a".into(),
            to: "b".into()
        }]
    );
    let added = m[1].changes();
    assert!(
        matches!(&added[..], [Change::AddColumn { column }] if column.name == "c" && column.type_sql == "numeric(10,2)" && column.default.as_deref() == Some("1.5")),
        "{added:?}"
    );
    assert_eq!(m[1].summary(), "add column c numeric(10,2)");
}

#[test]
fn rejects_what_it_cannot_read() {
    assert!(DdlMessage::parse(b"not json").is_err());
    let mut m = messages().remove(0);
    m.version = 2;
    let body = serde_json::to_vec(&m).expect("serializes");
    assert!(DdlMessage::parse(&body).unwrap_err().contains("version 2"));
    let mut m = messages().remove(0);
    m.old.oid += 1;
    let body = serde_json::to_vec(&m).expect("serializes");
    assert!(DdlMessage::parse(&body).is_err());
}

#[test]
fn diff_by_attnum_and_index_name() {
    let base = messages().remove(1).new;
    let mut new = base.clone();
    new.name = "u2".into();
    new.columns.retain(|c| c.name != "b"); // dropped
    if let Some(c) = new.columns.iter_mut().find(|c| c.name == "c") {
        c.name = "c2".into();
        c.type_oid = 20;
        c.typmod = -1;
        c.type_sql = "bigint".into();
    }
    new.indexes.retain(|i| i.name != "u_a");
    new.indexes.push(IndexDef {
        name: "u_c".into(),
        definition: "CREATE INDEX u_c ON public.u2 USING btree (c2)".into(),
        constraint: false,
    });
    new.indexes.retain(|i| !i.constraint); // a dropped primary key: not an index change
    new.partitions.push("public.p9".into());
    let changes = diff(&base, &new);
    let text: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
    assert_eq!(
        text,
        vec![
            "rename table public.u to public.u2",
            "drop column b",
            "rename column c to c2",
            "column c2 type numeric(10,2) -> bigint",
            "drop index u_a",
            "create index u_c",
            "attach partition public.p9",
        ]
    );
    assert!(diff(&base, &base).is_empty());
}

mod routing {
    use std::collections::HashSet;

    use tokio::sync::mpsc;

    use super::MESSAGES;
    use crate::config::TableSelection;
    use crate::model::{Event, TxnMeta};
    use crate::pipeline::ack::Tracker;
    use crate::pipeline::fanout::{Fanout, Route};
    use crate::sink::{QueueBytes, SinkItem, SinkQueue};
    use crate::Lsn;

    fn route(name: &str, tables: &[&str]) -> Route {
        Route {
            sink: name.into(),
            tables: TableSelection::Listed(tables.iter().map(|t| t.to_string()).collect()),
            ..Route::default()
        }
    }

    /// What each sink gets for one transaction holding the capture's first
    /// message (table public.u): the kinds of its items, in order.
    async fn deliver(published: Option<HashSet<u32>>, routes: Vec<Route>) -> Vec<Vec<String>> {
        let (_tracker, issuer, _ackers, _rx) = Tracker::new(&vec![Lsn(0); routes.len()], Lsn(0));
        let mut outs = Vec::new();
        let mut queues = Vec::new();
        for r in routes {
            let (tx, rx) = mpsc::channel(64);
            let bytes = QueueBytes::new(1 << 20);
            queues.push(SinkQueue::new(rx, bytes.clone()));
            outs.push((r, tx, bytes));
        }
        let mut fanout = Fanout::new(outs, issuer).with_ddl_capture(published);
        let meta = TxnMeta {
            xid: 1,
            commit_lsn: Lsn(100),
            commit_ts: 0,
            origin: None,
        };
        let content = MESSAGES.lines().next().unwrap_or_default();
        let events = [
            Event::Begin(meta.clone()),
            Event::Message {
                lsn: Lsn(50),
                transactional: true,
                prefix: super::PREFIX.into(),
                content: bytes::Bytes::from(content.as_bytes().to_vec()),
            },
            Event::Commit {
                meta,
                end_lsn: Lsn(101),
            },
        ];
        for ev in events {
            fanout.dispatch(ev).await.expect("dispatch");
        }
        queues
            .iter_mut()
            .map(|q| {
                let mut kinds = Vec::new();
                while let Ok(item) = q.try_recv() {
                    kinds.push(match item {
                        SinkItem::Commit(_) => "commit".to_string(),
                        SinkItem::Event(ev) => match &*ev {
                            Event::Begin(_) => "begin".into(),
                            Event::Ddl { ddl, .. } => format!("ddl {}", ddl.summary()),
                            Event::Message { .. } => "message".into(),
                            other => format!("{other:?}"),
                        },
                    });
                }
                kinds
            })
            .collect()
    }

    /// With the capture on, the message becomes a schema change for the
    /// sinks that select the published table only; off, it stays a message
    /// for every sink; a table that is not published reaches none.
    #[tokio::test]
    async fn schema_changes_go_where_the_table_goes() {
        let rel_id = super::messages()[0].rel_id();
        let routes = || vec![route("a", &["public.u"]), route("b", &["public.other"])];
        let got = deliver(Some(HashSet::from([rel_id])), routes()).await;
        assert_eq!(
            got,
            vec![
                vec!["begin", "ddl rename column a to b", "commit"],
                vec!["begin", "commit"]
            ]
        );
        let got = deliver(None, routes()).await;
        assert_eq!(
            got,
            vec![
                vec!["begin", "message", "commit"],
                vec!["begin", "message", "commit"]
            ]
        );
        let got = deliver(Some(HashSet::new()), routes()).await;
        assert_eq!(got, vec![vec!["begin", "commit"], vec!["begin", "commit"]]);
    }
}
