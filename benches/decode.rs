//! Decoder throughput on realistic pgoutput traffic, in bytes of XLogData
//! payload per second.
//!
//! The workload is an `orders`-like table of 8 text columns (~100 bytes of
//! column data per row): single Inserts, Updates with the old key, a
//! Relation, and a whole transaction (Begin, Relation, 100 Inserts, 20
//! Updates, 10 Deletes, Commit) fed through a `Decoder`.

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use pgbridge::pgoutput::*;
use pgbridge::Lsn;

const REL_ID: RelId = 16_385;

fn encode(msg: &Message) -> Bytes {
    let mut out = BytesMut::new();
    encode_message(msg, &mut out);
    out.freeze()
}

fn relation() -> Message {
    let col = |name: &str, type_oid, key| Column {
        flags: u8::from(key),
        name: name.into(),
        type_oid,
        type_modifier: -1,
    };
    Message::Relation(Relation {
        xid: None,
        rel_id: REL_ID,
        namespace: "public".into(),
        name: "orders".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![
            col("id", 20, true),
            col("customer_id", 20, false),
            col("status", 25, false),
            col("amount", 1700, false),
            col("currency", 25, false),
            col("email", 25, false),
            col("created_at", 1184, false),
            col("note", 25, false),
        ],
    })
}

fn text(s: String) -> TupleValue {
    TupleValue::Text(Bytes::from(s))
}

/// One row, about 100 bytes of column data.
fn row(i: u64) -> Tuple {
    let status = if i.is_multiple_of(3) {
        "shipped"
    } else {
        "pending"
    };
    vec![
        text(format!("{}", 1_000_000 + i)),
        text(format!("{}", 40_000 + i % 977)),
        text(status.into()),
        text(format!("{}.{:02}", i % 5000, i % 100)),
        text("EUR".into()),
        text(format!("customer{}@example.com", i % 977)),
        text(format!(
            "2024-05-01 12:{:02}:{:02}.123456+00",
            i % 60,
            i % 59
        )),
        if i.is_multiple_of(4) {
            TupleValue::Null
        } else {
            text("leave at the door".into())
        },
    ]
}

fn insert(i: u64) -> Message {
    Message::Insert(Insert {
        xid: None,
        rel_id: REL_ID,
        new: row(i),
    })
}

fn key_only(i: u64) -> Tuple {
    let mut key = vec![TupleValue::Null; 8];
    key[0] = text(format!("{}", 1_000_000 + i));
    key
}

fn update_with_old_key(i: u64) -> Message {
    Message::Update(Update {
        xid: None,
        rel_id: REL_ID,
        old: Some(OldTuple::Key(key_only(i))),
        new: row(i + 1),
    })
}

fn transaction() -> Vec<Bytes> {
    let mut msgs = vec![
        Message::Begin(Begin {
            final_lsn: Lsn(0x16_B374_D848),
            commit_ts: 768_052_800_000_000,
            xid: 740,
        }),
        relation(),
    ];
    msgs.extend((0..100).map(insert));
    msgs.extend((0..20).map(update_with_old_key));
    msgs.extend((0..10).map(|i| {
        Message::Delete(Delete {
            xid: None,
            rel_id: REL_ID,
            old: OldTuple::Key(key_only(i)),
        })
    }));
    msgs.push(Message::Commit(Commit {
        flags: 0,
        commit_lsn: Lsn(0x16_B374_D848),
        end_lsn: Lsn(0x16_B374_D878),
        commit_ts: 768_052_800_000_000,
    }));
    msgs.iter().map(encode).collect()
}

fn bench_one(c: &mut Criterion, name: &str, buf: Bytes) {
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Bytes(buf.len() as u64));
    group.bench_function(format!("{name} ({} B)", buf.len()), |b| {
        b.iter(|| decode_message(black_box(&buf), false))
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    bench_one(c, "insert_8_text_cols", encode(&insert(42)));
    bench_one(c, "update_old_key", encode(&update_with_old_key(42)));
    bench_one(c, "relation_8_cols", encode(&relation()));

    let txn = transaction();
    let total: usize = txn.iter().map(Bytes::len).sum();
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Bytes(total as u64));
    group.bench_function(format!("transaction_132_msgs ({total} B)"), |b| {
        b.iter(|| {
            let mut decoder = Decoder::new();
            for buf in &txn {
                let _ = black_box(decoder.decode(black_box(buf)));
            }
        })
    });
    group.finish();
}

criterion_group!(decode, benches);
criterion_main!(decode);
