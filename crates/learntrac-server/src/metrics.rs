//! Prometheus metrics, served on their own listener (loopback by default)
//! in the text exposition format.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};

use crate::AppState;

/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Counters keyed by their rendered label set, such as
/// `route="/wiki/{page}",method="GET",status="2xx"`.
#[derive(Default)]
struct CounterVec {
    series: RwLock<BTreeMap<String, Arc<AtomicU64>>>,
}

impl CounterVec {
    fn add(&self, labels: &str, amount: u64) {
        let found = self.series.read().unwrap_or_else(|p| p.into_inner()).get(labels).cloned();
        let counter = match found {
            Some(counter) => counter,
            None => {
                let mut series = self.series.write().unwrap_or_else(|p| p.into_inner());
                series.entry(labels.to_string()).or_default().clone()
            }
        };
        counter.fetch_add(amount, Ordering::Relaxed);
    }

    fn render(&self, name: &str, out: &mut String) {
        for (labels, value) in self.series.read().unwrap_or_else(|p| p.into_inner()).iter() {
            out.push_str(&format!("{name}{{{labels}}} {}\n", value.load(Ordering::Relaxed)));
        }
    }
}

/// One route's latency histogram; sums are kept in microseconds.
#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; 12],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// The process's metrics.
#[derive(Default)]
pub struct Metrics {
    requests: CounterVec,
    latency: RwLock<BTreeMap<String, Arc<Histogram>>>,
    rate_limited: CounterVec,
    sign_ins: CounterVec,
    filter_matches: CounterVec,
    upstream_requests: CounterVec,
}

/// Escapes a label value for the exposition format.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    /// Counts a request: its route template, method, status class and latency.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let class = format!("{}xx", status / 100);
        self.requests.add(&format!("route=\"{}\",method=\"{}\",status=\"{class}\"", label(route), label(method)), 1);

        let found = self.latency.read().unwrap_or_else(|p| p.into_inner()).get(route).cloned();
        let histogram = match found {
            Some(histogram) => histogram,
            None => {
                self.latency.write().unwrap_or_else(|p| p.into_inner()).entry(route.to_string()).or_default().clone()
            }
        };
        for (bucket, bound) in histogram.buckets.iter().zip(BUCKETS) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        histogram.count.fetch_add(1, Ordering::Relaxed);
        histogram.sum_micros.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// Counts a request rejected by a rate limit; `scope` names the limit.
    pub fn observe_rate_limited(&self, scope: &str) {
        self.rate_limited.add(&format!("scope=\"{}\"", label(scope)), 1);
    }

    /// Counts a filtering rule's match; `mode` is block or count.
    pub fn observe_filter_match(&self, rule: &str, mode: &str) {
        self.filter_matches.add(&format!("rule=\"{}\",mode=\"{}\"", label(rule), label(mode)), 1);
    }

    /// Counts a request the gateway sent to an upstream instance, by outcome:
    /// `answered`, `failed` or `timeout`.
    pub fn observe_upstream(&self, upstream: &str, instance: &str, outcome: &str) {
        self.upstream_requests.add(
            &format!(
                "upstream=\"{}\",instance=\"{}\",outcome=\"{}\"",
                label(upstream),
                label(instance),
                label(outcome)
            ),
            1,
        );
    }

    /// Counts a sign-in by outcome: `success`, `wrong_password`, …
    pub fn observe_sign_in(&self, outcome: &str) {
        self.sign_ins.add(&format!("outcome=\"{}\"", label(outcome)), 1);
    }

    /// Renders every metric; `pool` is (open, idle, maximum) connections.
    pub fn render(&self, pool: (u32, usize, u32)) -> String {
        let mut out = String::new();
        out.push_str("# HELP learntrac_http_requests_total HTTP requests by route, method and status class.\n");
        out.push_str("# TYPE learntrac_http_requests_total counter\n");
        self.requests.render("learntrac_http_requests_total", &mut out);

        out.push_str("# HELP learntrac_http_request_duration_seconds Time from request to response.\n");
        out.push_str("# TYPE learntrac_http_request_duration_seconds histogram\n");
        for (route, histogram) in self.latency.read().unwrap_or_else(|p| p.into_inner()).iter() {
            let route = label(route);
            for (bucket, bound) in histogram.buckets.iter().zip(BUCKETS) {
                out.push_str(&format!(
                    "learntrac_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {}\n",
                    bucket.load(Ordering::Relaxed)
                ));
            }
            let count = histogram.count.load(Ordering::Relaxed);
            out.push_str(&format!(
                "learntrac_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {count}\n"
            ));
            out.push_str(&format!(
                "learntrac_http_request_duration_seconds_sum{{route=\"{route}\"}} {}\n",
                histogram.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
            ));
            out.push_str(&format!("learntrac_http_request_duration_seconds_count{{route=\"{route}\"}} {count}\n"));
        }

        out.push_str("# HELP learntrac_rate_limited_total Requests rejected by a rate limit.\n");
        out.push_str("# TYPE learntrac_rate_limited_total counter\n");
        self.rate_limited.render("learntrac_rate_limited_total", &mut out);
        out.push_str("# HELP learntrac_sign_ins_total Password checks by outcome.\n");
        out.push_str("# TYPE learntrac_sign_ins_total counter\n");
        self.sign_ins.render("learntrac_sign_ins_total", &mut out);
        out.push_str("# HELP learntrac_filter_matches_total Requests matched by a filtering rule, by rule and mode.\n");
        out.push_str("# TYPE learntrac_filter_matches_total counter\n");
        self.filter_matches.render("learntrac_filter_matches_total", &mut out);
        out.push_str("# HELP learntrac_upstream_requests_total Requests the gateway sent to each upstream instance.\n");
        out.push_str("# TYPE learntrac_upstream_requests_total counter\n");
        self.upstream_requests.render("learntrac_upstream_requests_total", &mut out);

        let (open, idle, max) = pool;
        out.push_str("# HELP learntrac_db_connections Database pool connections by state.\n");
        out.push_str("# TYPE learntrac_db_connections gauge\n");
        out.push_str(&format!(
            "learntrac_db_connections{{state=\"in_use\"}} {}\n",
            (open as usize).saturating_sub(idle)
        ));
        out.push_str(&format!("learntrac_db_connections{{state=\"idle\"}} {idle}\n"));
        out.push_str("# HELP learntrac_db_connections_max Maximum database pool connections.\n");
        out.push_str("# TYPE learntrac_db_connections_max gauge\n");
        out.push_str(&format!("learntrac_db_connections_max {max}\n"));
        out
    }
}

/// Returns the method for the metrics label: a standard method, or
/// `OTHER`, so that clients cannot add series with made-up methods.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Serves `GET /metrics` on `listener` until the process ends.
pub async fn serve(state: AppState, listener: std::net::TcpListener) -> Result<()> {
    let address: SocketAddr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener).context("cannot use the metrics listener")?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(|axum::extract::State(state): axum::extract::State<AppState>| async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    state.metrics.render(state.store.pool_connections()),
                )
            }),
        )
        .with_state(state);
    tracing::info!(metrics = %address, "metrics listening");
    axum::serve(listener, app).await.context("the metrics listener failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_share_a_label() {
        assert_eq!(method_label(&axum::http::Method::GET), "GET");
        let made_up = axum::http::Method::from_bytes(b"M!#$%").expect("method");
        assert_eq!(method_label(&made_up), "OTHER");
    }

    #[test]
    fn exposition_has_counters_and_histograms() {
        let metrics = Metrics::default();
        metrics.observe_request("/wiki/{page}", "GET", 200, 0.003);
        metrics.observe_request("/wiki/{page}", "GET", 200, 0.2);
        metrics.observe_sign_in("wrong_password");
        let text = metrics.render((3, 1, 16));
        assert!(
            text.contains("learntrac_http_requests_total{route=\"/wiki/{page}\",method=\"GET\",status=\"2xx\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("learntrac_http_request_duration_seconds_bucket{route=\"/wiki/{page}\",le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(text.contains("learntrac_http_request_duration_seconds_count{route=\"/wiki/{page}\"} 2"), "{text}");
        assert!(text.contains("learntrac_sign_ins_total{outcome=\"wrong_password\"} 1"), "{text}");
        assert!(text.contains("learntrac_db_connections{state=\"in_use\"} 2"), "{text}");
    }
}
