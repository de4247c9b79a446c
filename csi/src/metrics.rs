//! The driver's metrics (`mirrorfs_csi_*`) and the HTTP side of `--metrics-addr`: `/metrics` in
//! Prometheus text format and `/healthz`, which answers as Probe does.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub method: &'static str,
    /// `OK` or the gRPC code name.
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: &'static str,
}

pub struct Metrics {
    pub registry: Registry,
    pub calls: Family<CallLabels, Counter>,
    pub seconds: Family<MethodLabel, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let calls = Family::<CallLabels, Counter>::default();
        let seconds = Family::<MethodLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_1, 2.0, 20))
        });
        let mut registry = Registry::default();
        let r = registry.sub_registry_with_prefix("mirrorfs_csi");
        r.register("calls", "CSI calls by method and gRPC code", calls.clone());
        r.register(
            "call_seconds",
            "CSI call duration by method",
            seconds.clone(),
        );
        Self {
            registry,
            calls,
            seconds,
        }
    }
}

impl Metrics {
    pub fn record(&self, method: &'static str, code: tonic::Code, took: Duration) {
        let code = if code == tonic::Code::Ok {
            "OK".to_owned()
        } else {
            format!("{code:?}")
        };
        self.calls.get_or_create(&CallLabels { method, code }).inc();
        self.seconds
            .get_or_create(&MethodLabel { method })
            .observe(took.as_secs_f64());
    }
}

/// Serves `/metrics` and `/healthz` (`health` gives Ok or the reason) until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    let mut body = String::new();
                    match prometheus_client::encoding::text::encode(&mut body, &metrics.registry) {
                        Ok(()) => (
                            StatusCode::OK,
                            [(
                                header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            body,
                        )
                            .into_response(),
                        Err(e) => {
                            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
                        }
                    }
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let health = health.clone();
                async move {
                    match health() {
                        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
                        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
                    }
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut out = String::new();
        s.read_to_string(&mut out)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        out
    }

    #[tokio::test]
    async fn metrics_and_healthz_are_served() {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let m = Arc::new(Metrics::default());
        m.record(
            "NodePublishVolume",
            tonic::Code::Ok,
            Duration::from_millis(3),
        );
        m.record(
            "CreateVolume",
            tonic::Code::NotFound,
            Duration::from_millis(1),
        );
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let h = healthy.clone();
        let check: Arc<dyn Fn() -> Result<(), String> + Send + Sync> = Arc::new(move || {
            if h.load(std::sync::atomic::Ordering::SeqCst) {
                Ok(())
            } else {
                Err("/dev/fuse is missing".into())
            }
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(l, m, check, async {
            let _ = rx.await;
        }));
        let body = get(addr, "/metrics").await;
        assert!(
            body.contains("mirrorfs_csi_calls_total{method=\"CreateVolume\",code=\"NotFound\"} 1"),
            "{body}"
        );
        assert!(
            body.contains("mirrorfs_csi_call_seconds_count{method=\"NodePublishVolume\"} 1"),
            "{body}"
        );
        let ok = get(addr, "/healthz").await;
        assert!(
            ok.starts_with("HTTP/1.1 200") && ok.ends_with("ok\n"),
            "{ok}"
        );
        healthy.store(false, std::sync::atomic::Ordering::SeqCst);
        let bad = get(addr, "/healthz").await;
        assert!(
            bad.starts_with("HTTP/1.1 503") && bad.contains("/dev/fuse is missing"),
            "{bad}"
        );
        let _ = tx.send(());
        let r = server.await.map_err(|e| e.to_string());
        assert!(matches!(r, Ok(Ok(()))), "{r:?}");
    }
}
