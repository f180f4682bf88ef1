//! The `[http]` endpoints of `pgbridge run`:
//! - `/healthz`: `200 ok` while the pipeline copies or streams (and the
//!   source has been heard from in the last 90 s, and no sink has had
//!   changes pending without progress for `stall_secs`), else `503` with
//!   the reason (starting, retrying after an error, stopped, a stalled
//!   sink and for how long).
//!   A standby (waiting for the pipeline lock) answers `200 standby`.
//! - `/metrics`: Prometheus text format (positions as byte offsets).
//! - `/status`: the same as JSON, LSNs as text.
//! - `/wait?lsn=X[&sink=NAME][&timeout_ms=N]`: returns `200` once the sink
//!   (every sink without `sink`) holds every transaction ending at or
//!   before X, `504` when `timeout_ms` (default 10 000) passes first,
//!   `503` on a standby, `400`/`404` for a bad query or an unknown sink.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::pipeline::stats::{Phase, Snapshot, Stats, WaitError};

/// Binds `addr` (so that a taken port fails `run` at once, naming it).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("http.listen = \"{addr}\": cannot listen: {e}; pick a free address"))
}

/// Serves the endpoints on `listener` until the task is dropped; looks at
/// the sinks every second meanwhile (see [`Stats::observe`]).
pub async fn serve(listener: TcpListener, stats: Arc<Stats>) {
    let watched = stats.clone();
    let _watch = AbortOnDrop(tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            watched.observe();
        }
    }));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "http: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let stats = stats.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let stats = stats.clone();
                async move {
                    if req.uri().path() == "/wait" && req.method() == Method::GET {
                        return Ok::<_, Infallible>(wait(&req, &stats).await);
                    }
                    Ok::<_, Infallible>(respond(&req, &stats))
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "http: connection ended");
            }
        });
    }
}

/// Ends a spawned task when dropped (with the server's task).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn respond<B>(req: &Request<B>, stats: &Stats) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match req.uri().path() {
        "/healthz" => match stats.health() {
            Ok(()) if stats.snapshot().phase == Phase::Standby => {
                text(StatusCode::OK, "standby\n".into())
            }
            Ok(()) => text(StatusCode::OK, "ok\n".into()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        "/metrics" => {
            let mut r = text(StatusCode::OK, metrics(stats));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/status" => {
            let body = serde_json::to_string_pretty(&stats.snapshot())
                .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
            let mut r = text(StatusCode::OK, body + "\n");
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz, /metrics, /status or /wait?lsn=X\n".into(),
        ),
    }
}

/// The longest `/wait` (`timeout_ms`) accepted.
const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(3600);

/// `GET /wait?lsn=X[&sink=NAME][&timeout_ms=N]`.
async fn wait<B>(req: &Request<B>, stats: &Stats) -> Response<Full<Bytes>> {
    let (mut lsn, mut sink, mut timeout) = (None, None, std::time::Duration::from_secs(10));
    for pair in req.uri().query().unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_encoding::percent_decode_str(v)
            .decode_utf8_lossy()
            .into_owned();
        match k {
            "lsn" => match v.parse::<crate::Lsn>() {
                Ok(l) => lsn = Some(l),
                Err(_) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("lsn={v:?} is not an LSN: give one like 16/B374D848, e.g. from SELECT pg_current_wal_insert_lsn() after the commit\n"),
                    )
                }
            },
            "sink" => sink = Some(v),
            "timeout_ms" => match v.parse::<u64>() {
                Ok(ms) => timeout = std::time::Duration::from_millis(ms).min(MAX_WAIT),
                Err(_) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("timeout_ms={v:?} is not a whole number of milliseconds\n"),
                    )
                }
            },
            "" => {}
            other => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter {other:?}: use lsn, sink and timeout_ms\n"),
                )
            }
        }
    }
    let Some(lsn) = lsn else {
        return text(
            StatusCode::BAD_REQUEST,
            "give the position to wait for: /wait?lsn=X (X from SELECT pg_current_wal_insert_lsn() after the commit)\n".into(),
        );
    };
    match stats.wait_for(lsn, sink.as_deref(), timeout).await {
        Ok(positions) => text(
            StatusCode::OK,
            format!(
                "ok: {}\n",
                positions
                    .iter()
                    .map(|(n, p)| format!("sink {n} holds {p}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        Err(e @ WaitError::UnknownSink(_)) => text(StatusCode::NOT_FOUND, format!("{e}\n")),
        Err(e @ WaitError::Standby) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
        Err(e @ WaitError::Timeout { .. }) => text(StatusCode::GATEWAY_TIMEOUT, format!("{e}\n")),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

/// A label value with `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus exposition of `stats`.
pub fn metrics(stats: &Stats) -> String {
    let s = stats.snapshot();
    let p = format!("pipeline=\"{}\"", label(&s.pipeline));
    let mut out = String::new();
    pipeline_metrics(&s, &p, &mut out);
    sink_metrics(&s, &p, &mut out);
    backfill_metrics(&s, &p, &mut out);
    if let Some(h) = &s.source {
        crate::source::health::metrics(h, &p, &mut out);
    }
    out
}

/// Per table backfill progress (see `pipeline::backfill`): declared always,
/// with a sample for each table that had a backfill in this process.
fn backfill_metrics(s: &Snapshot, p: &str, out: &mut String) {
    let per = |f: &dyn Fn(&crate::pipeline::stats::BackfillProgress) -> f64| -> Vec<(String, f64)> {
        s.backfills
            .iter()
            .map(|b| (format!("{p},table=\"{}\"", label(&b.table)), f(b)))
            .collect()
    };
    write_metric(
        out,
        "pgbridge_backfill_chunks_total",
        "counter",
        "chunks of the table's latest backfill that every sink holds",
        &per(&|b| b.chunks as f64),
    );
    write_metric(
        out,
        "pgbridge_backfill_rows_total",
        "counter",
        "rows of the table's latest backfill that every sink holds",
        &per(&|b| b.rows as f64),
    );
    write_metric(
        out,
        "pgbridge_backfill_running",
        "gauge",
        "1 while the table's backfill runs, 0 when done or failed",
        &per(&|b| f64::from(u8::from(b.state == "running"))),
    );
    write_metric(
        out,
        "pgbridge_backfill_failed",
        "gauge",
        "1 when the table's latest backfill failed",
        &per(&|b| f64::from(u8::from(b.state == "failed"))),
    );
}

/// One metric: its HELP and TYPE lines, then one line per sample (labels,
/// value).
fn write_metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{{{labels}}} {v}");
    }
}

/// The pipeline's own metrics (`p` is its label): the phase, the positions
/// in the WAL, the counters.
fn pipeline_metrics(s: &Snapshot, p: &str, out: &mut String) {
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        write_metric(out, name, kind, help, samples)
    };
    let up = matches!(s.phase, Phase::Copying | Phase::Streaming);
    metric(
        "pgbridge_up",
        "gauge",
        "1 while the pipeline copies or streams",
        &[(p.to_string(), f64::from(u8::from(up)))],
    );
    let phases: Vec<(String, f64)> = Phase::ALL
        .iter()
        .map(|ph| {
            (
                format!("{p},phase=\"{}\"", ph.name()),
                f64::from(u8::from(*ph == s.phase)),
            )
        })
        .collect();
    metric(
        "pgbridge_phase",
        "gauge",
        "1 for the phase the pipeline is in",
        &phases,
    );
    metric(
        "pgbridge_standby",
        "gauge",
        "1 while this process waits as a standby for the pipeline lock that another holds",
        &[(
            p.to_string(),
            f64::from(u8::from(s.phase == Phase::Standby)),
        )],
    );
    let bytes = |l: crate::Lsn| l.0 as f64;
    metric(
        "pgbridge_confirmed_lsn_bytes",
        "gauge",
        "the position confirmed to the slot, as a byte offset",
        &[(p.to_string(), bytes(s.confirmed))],
    );
    metric(
        "pgbridge_received_lsn_bytes",
        "gauge",
        "the end of the last message received from the source",
        &[(p.to_string(), bytes(s.received))],
    );
    metric(
        "pgbridge_source_wal_end_bytes",
        "gauge",
        "the source server's WAL end as of its last message",
        &[(p.to_string(), bytes(s.wal_end))],
    );
    metric(
        "pgbridge_lag_bytes",
        "gauge",
        "WAL between the server's end and the confirmed position (what the slot holds)",
        &[(p.to_string(), s.lag_bytes as f64)],
    );
    if let Some(age) = s.last_source_message_seconds {
        metric(
            "pgbridge_source_silence_seconds",
            "gauge",
            "seconds since the last message from the source",
            &[(p.to_string(), age)],
        );
    }
    for (name, help, v) in [
        (
            "pgbridge_transactions_total",
            "source transactions dispatched to the sinks",
            s.transactions,
        ),
        (
            "pgbridge_changes_total",
            "row changes dispatched to the sinks",
            s.changes,
        ),
        (
            "pgbridge_restarts_total",
            "attempts ended by a transient error",
            s.restarts,
        ),
        (
            "pgbridge_copied_rows_total",
            "rows written by the initial copy",
            s.copied_rows,
        ),
    ] {
        metric(name, "counter", help, &[(p.to_string(), v as f64)]);
    }
}

/// One sample per sink of each sink metric, labelled with the sink's name
/// and type besides `p`.
fn sink_metrics(s: &Snapshot, p: &str, out: &mut String) {
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        write_metric(out, name, kind, help, samples)
    };
    let bytes = |l: crate::Lsn| l.0 as f64;
    let per_sink = |f: &dyn Fn(&crate::pipeline::stats::SinkSnapshot) -> Option<f64>| {
        s.sinks
            .iter()
            .filter_map(|k| {
                f(k).map(|v| {
                    (
                        format!("{p},sink=\"{}\",type=\"{}\"", label(&k.name), k.kind),
                        v,
                    )
                })
            })
            .collect::<Vec<_>>()
    };
    metric(
        "pgbridge_sink_acked_lsn_bytes",
        "gauge",
        "the end of the last transaction the sink made durable",
        &per_sink(&|k| k.acked.map(bytes)),
    );
    metric(
        "pgbridge_sink_queue_items",
        "gauge",
        "items waiting in the sink's queue",
        &per_sink(&|k| Some(k.queue_items as f64)),
    );
    metric(
        "pgbridge_sink_queue_capacity",
        "gauge",
        "the sink queue's capacity",
        &per_sink(&|k| Some(k.queue_capacity as f64)),
    );
    metric(
        "pgbridge_sink_lag_seconds",
        "gauge",
        "while transactions wait for the sink: age of the source commit time of the last one it made durable (0 when it has everything dispatched)",
        &per_sink(&|k| Some(k.lag_seconds)),
    );
    metric(
        "pgbridge_sink_stalled_seconds",
        "gauge",
        "seconds the sink has had changes pending and made no progress (0 while it works)",
        &per_sink(&|k| Some(k.stalled_seconds)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Lsn;

    #[test]
    fn metrics_text_format() {
        let stats = Stats::new("p\"1", "slot", vec![("pg".into(), "postgres")]);
        stats.set_phase(Phase::Copying);
        stats.confirmed(Lsn(42));
        stats.transaction();
        let m = metrics(&stats);
        assert!(m.contains("pgbridge_up{pipeline=\"p\\\"1\"} 1\n"), "{m}");
        assert!(m.contains("pgbridge_phase{pipeline=\"p\\\"1\",phase=\"copying\"} 1\n"));
        assert!(m.contains("pgbridge_phase{pipeline=\"p\\\"1\",phase=\"streaming\"} 0\n"));
        assert!(m.contains("pgbridge_confirmed_lsn_bytes{pipeline=\"p\\\"1\"} 42\n"));
        assert!(m.contains("pgbridge_transactions_total{pipeline=\"p\\\"1\"} 1\n"));
        assert!(m.contains(
            "pgbridge_sink_queue_items{pipeline=\"p\\\"1\",sink=\"pg\",type=\"postgres\"} 0\n"
        ));
        assert!(
            m.contains("pgbridge_standby{pipeline=\"p\\\"1\"} 0\n"),
            "{m}"
        );
        assert!(m.contains(
            "pgbridge_sink_lag_seconds{pipeline=\"p\\\"1\",sink=\"pg\",type=\"postgres\"} 0\n"
        ));
        stats.set_phase(Phase::Standby);
        let m2 = metrics(&stats);
        assert!(
            m2.contains("pgbridge_standby{pipeline=\"p\\\"1\"} 1\n"),
            "{m2}"
        );
        let req = Request::get("/healthz").body(()).expect("request");
        let r = respond(&req, &stats);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            format!("{:?}", r.body()),
            format!("{:?}", Full::new(Bytes::from("standby\n")))
        );
        // Every sample line belongs to a declared metric.
        for line in m.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split('{').next().unwrap_or_default();
            assert!(m.contains(&format!("# TYPE {name} ")), "{line}");
        }
    }
}
