//! The `[http]` endpoints of `pgbridge run`:
//! - `/healthz`: `200 ok` while the pipeline copies or streams (and the
//!   source has been heard from in the last 90 s, and no sink has had
//!   changes pending without progress for `stall_secs`), else `503` with
//!   the reason (starting, retrying after an error, stopped, a stalled
//!   sink and for how long).
//! - `/metrics`: Prometheus text format (positions as byte offsets).
//! - `/status`: the same as JSON, LSNs as text.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::pipeline::stats::{Phase, Stats};

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
                async move { Ok::<_, Infallible>(respond(&req, &stats)) }
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
            "not found: try /healthz, /metrics or /status\n".into(),
        ),
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
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    };
    let up = matches!(s.phase, Phase::Copying | Phase::Streaming);
    metric(
        "pgbridge_up",
        "gauge",
        "1 while the pipeline copies or streams",
        &[(p.clone(), f64::from(u8::from(up)))],
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
    let bytes = |l: crate::Lsn| l.0 as f64;
    metric(
        "pgbridge_confirmed_lsn_bytes",
        "gauge",
        "the position confirmed to the slot, as a byte offset",
        &[(p.clone(), bytes(s.confirmed))],
    );
    metric(
        "pgbridge_received_lsn_bytes",
        "gauge",
        "the end of the last message received from the source",
        &[(p.clone(), bytes(s.received))],
    );
    metric(
        "pgbridge_source_wal_end_bytes",
        "gauge",
        "the source server's WAL end as of its last message",
        &[(p.clone(), bytes(s.wal_end))],
    );
    metric(
        "pgbridge_lag_bytes",
        "gauge",
        "WAL between the server's end and the confirmed position (what the slot holds)",
        &[(p.clone(), s.lag_bytes as f64)],
    );
    if let Some(age) = s.last_source_message_seconds {
        metric(
            "pgbridge_source_silence_seconds",
            "gauge",
            "seconds since the last message from the source",
            &[(p.clone(), age)],
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
        metric(name, "counter", help, &[(p.clone(), v as f64)]);
    }
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
        "pgbridge_sink_stalled_seconds",
        "gauge",
        "seconds the sink has had changes pending and made no progress (0 while it works)",
        &per_sink(&|k| Some(k.stalled_seconds)),
    );
    out
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
        // Every sample line belongs to a declared metric.
        for line in m.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split('{').next().unwrap_or_default();
            assert!(m.contains(&format!("# TYPE {name} ")), "{line}");
        }
    }
}
