//! The operator's HTTP endpoint on `HTTP_ADDR`: `/healthz` (liveness), `/readyz` (readiness) and
//! `/metrics` (Prometheus). Plain text answers, as kube-apiserver's own probes give.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::health::{self, Health};
use crate::metrics::Metrics;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
#[error("listen on HTTP_ADDR {addr} for probes and metrics: {source}")]
pub struct BindError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// The probes answer from the health record; `/metrics` encodes the process's one registry, which
/// the health record writes its gauges to as well.
#[derive(Clone)]
struct Served {
    health: Health,
    metrics: Metrics,
}

pub fn router(health: Health, metrics: Metrics) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(encode_metrics))
        .with_state(Served { health, metrics })
}

async fn healthz(State(served): State<Served>) -> Response {
    match served.health.alive() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn readyz(State(served): State<Served>) -> Response {
    let checks = served.health.readiness();
    let status = if checks.iter().all(|c| c.ok) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, health::render(&checks)).into_response()
}

async fn encode_metrics(State(served): State<Served>) -> Response {
    ([(header::CONTENT_TYPE, OPENMETRICS)], served.metrics.encode()).into_response()
}

/// Binds now (so a taken port fails start-up with a clear message), then serves until `stop`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

pub async fn serve(listener: TcpListener, health: Health, metrics: Metrics, stop: CancellationToken) {
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "serving /healthz, /readyz and /metrics");
    let server =
        axum::serve(listener, router(health, metrics)).with_graceful_shutdown(stop.cancelled_owned());
    if let Err(error) = server.await {
        tracing::warn!(%error, "probe and metrics server stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{ExportStatus, Role};
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get_path(health: &Health, metrics: &Metrics, path: &str) -> (StatusCode, String) {
        let response = router(health.clone(), metrics.clone())
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn readyz_follows_role_caches_and_exports() {
        let metrics = Metrics::new();
        let health = Health::new(metrics.clone());
        assert_eq!(
            get_path(&health, &metrics, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        health.set_role(Role::Follower);
        assert_eq!(get_path(&health, &metrics, "/readyz").await.0, StatusCode::OK);
        health.set_role(Role::Leader);
        let (status, body) = get_path(&health, &metrics, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        health.set_caches_synced(true);
        health.export_status("127.0.0.1:/export", ExportStatus::Failing("timed out".into()));
        let (status, body) = get_path(&health, &metrics, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("[-]export 127.0.0.1:/export: timed out"), "{body}");
        health.export_status("127.0.0.1:/export", ExportStatus::Healthy);
        assert_eq!(get_path(&health, &metrics, "/readyz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn healthz_and_metrics_answer() {
        let metrics = Metrics::new();
        let health = Health::new(metrics.clone());
        health.beat();
        assert_eq!(
            get_path(&health, &metrics, "/healthz").await,
            (StatusCode::OK, "ok\n".into())
        );
        health.set_role(Role::Leader);
        let (status, body) = get_path(&health, &metrics, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("nfs_subdir_provisioner_leader 1"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
    }
}
