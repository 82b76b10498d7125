//! The routing table and the upstreams behind it. A role that runs in the
//! gateway's process is called directly, with no socket. A role in another
//! process is reached over mutual TLS, round robin over its healthy
//! instances, and each instance is checked on `/healthz` at a fixed interval.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, Response, StatusCode};
use bytes::Bytes;
use tower::ServiceExt;

use super::settings::GatewaySettings;

/// Headers that describe one connection, not the message, and are not
/// forwarded (RFC 9110, section 7.6.1).
const HOP_BY_HOP: &[&str] =
    &["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];

/// Headers a role sends back to the gateway about the request it served;
/// the gateway reads and removes them.
pub const USER_HEADER: &str = "x-learntrac-user";
pub const ROUTE_HEADER: &str = "x-learntrac-route";

pub enum Upstream {
    /// A role in this process.
    Local(Router),
    Remote(Pool),
}

/// The instances of one remote upstream.
pub struct Pool {
    pub instances: Vec<Instance>,
    next: AtomicUsize,
}

pub struct Instance {
    /// `https://HOST:PORT`, with no trailing slash.
    pub base: String,
    healthy: AtomicBool,
}

impl Instance {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records the instance's health; `reason` describes the failure.
    fn set_healthy(&self, healthy: bool, upstream: &str, reason: &str) {
        let was = self.healthy.swap(healthy, Ordering::Relaxed);
        if was != healthy {
            if healthy {
                tracing::info!(upstream, instance = %self.base, "upstream instance is healthy again");
            } else {
                tracing::warn!(
                    upstream,
                    instance = %self.base,
                    reason,
                    "upstream instance is unhealthy; requests go to the other healthy instances, if any"
                );
            }
        }
    }
}

/// One entry of the routing table.
pub struct Route {
    pub prefix: String,
    pub name: String,
    pub upstream: Arc<Upstream>,
}

pub struct RoutingTable {
    /// Longest prefix first.
    routes: Vec<Route>,
}

impl RoutingTable {
    /// Builds the table; `local(name)` gives the in-process router of a
    /// role, or `None` when this process does not run it.
    pub fn new(settings: &GatewaySettings, local: impl Fn(&str) -> Option<Router>) -> anyhow::Result<RoutingTable> {
        let mut upstreams: std::collections::BTreeMap<String, Arc<Upstream>> = Default::default();
        let mut routes = Vec::new();
        for setting in &settings.routes {
            let upstream = match upstreams.get(&setting.upstream) {
                Some(upstream) => upstream.clone(),
                None => {
                    let upstream = match settings.upstreams.get(&setting.upstream) {
                        Some(addresses) => Upstream::Remote(Pool {
                            instances: addresses
                                .iter()
                                .map(|base| Instance {
                                    base: base.trim_end_matches('/').to_string(),
                                    healthy: AtomicBool::new(true),
                                })
                                .collect(),
                            next: AtomicUsize::new(0),
                        }),
                        None => match local(&setting.upstream) {
                            Some(router) => Upstream::Local(router),
                            None => {
                                anyhow::bail!(super::settings::unserved_route(&setting.prefix, &setting.upstream))
                            }
                        },
                    };
                    let upstream = Arc::new(upstream);
                    upstreams.insert(setting.upstream.clone(), upstream.clone());
                    upstream
                }
            };
            routes.push(Route { prefix: setting.prefix.clone(), name: setting.upstream.clone(), upstream });
        }
        routes.sort_by_key(|route| std::cmp::Reverse(route.prefix.len()));
        Ok(RoutingTable { routes })
    }

    /// Returns the route for `path`.
    pub fn lookup(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|route| GatewaySettings::under(path, &route.prefix))
    }

    /// Returns whether any route goes to a role in this process.
    pub fn has_local(&self) -> bool {
        self.routes.iter().any(|route| matches!(*route.upstream, Upstream::Local(_)))
    }

    /// Returns each remote upstream once, with its name.
    pub fn remote_pools(&self) -> Vec<(String, Arc<Upstream>)> {
        let mut seen: Vec<(String, Arc<Upstream>)> = Vec::new();
        for route in &self.routes {
            if matches!(*route.upstream, Upstream::Remote(_)) && !seen.iter().any(|(name, _)| *name == route.name) {
                seen.push((route.name.clone(), route.upstream.clone()));
            }
        }
        seen
    }
}

/// The request body as the gateway forwards it: read whole (and so
/// replayable on another instance) or streamed.
pub enum ForwardBody {
    Buffered(Bytes),
    Streamed(Body),
}

/// A forwarding failure, which becomes a 5xx response with the request id.
#[derive(Debug)]
pub enum ForwardError {
    /// No instance was healthy (503).
    Unavailable,
    /// The instance did not respond in time (504).
    Timeout,
    /// The instance returned no valid response (502).
    Failed(String),
}

/// Sends a request to a local role or a remote instance.
pub async fn forward(
    upstream: &Upstream,
    name: &str,
    client: &reqwest::Client,
    metrics: &crate::metrics::Metrics,
    request: Request<ForwardBody>,
    timeout: Duration,
) -> Result<Response<Body>, ForwardError> {
    match upstream {
        Upstream::Local(router) => {
            let (parts, body) = request.into_parts();
            let body = match body {
                ForwardBody::Buffered(bytes) => Body::from(bytes),
                ForwardBody::Streamed(body) => body,
            };
            let call = router.clone().oneshot(Request::from_parts(parts, body));
            match tokio::time::timeout(timeout, call).await {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(never)) => match never {},
                Err(_) => Err(ForwardError::Timeout),
            }
        }
        Upstream::Remote(pool) => forward_remote(pool, name, client, metrics, request, timeout).await,
    }
}

async fn forward_remote(
    pool: &Pool,
    name: &str,
    client: &reqwest::Client,
    metrics: &crate::metrics::Metrics,
    request: Request<ForwardBody>,
    timeout: Duration,
) -> Result<Response<Body>, ForwardError> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let replayable = matches!(body, ForwardBody::Buffered(_));
    let idempotent = parts.method.is_idempotent();
    let mut body = Some(body);
    let count = pool.instances.len();
    let start = pool.next.fetch_add(1, Ordering::Relaxed);
    let mut last_error = None;
    let mut tried = 0;
    for offset in 0..count {
        let instance = &pool.instances[(start + offset) % count];
        if !instance.is_healthy() {
            continue;
        }
        let Some(this_body) = body.take() else { break };
        tried += 1;
        let mut outgoing = client
            .request(parts.method.clone(), format!("{}{path}", instance.base))
            .headers(forwarded_headers(&parts.headers))
            .timeout(timeout);
        outgoing = match this_body {
            ForwardBody::Buffered(bytes) => {
                body = Some(ForwardBody::Buffered(bytes.clone()));
                outgoing.body(bytes)
            }
            ForwardBody::Streamed(stream) => outgoing.body(reqwest::Body::wrap_stream(stream.into_data_stream())),
        };
        match outgoing.send().await {
            Ok(response) => {
                metrics.observe_upstream(name, &instance.base, "answered");
                return Ok(into_response(response));
            }
            Err(error) if error.is_timeout() => {
                metrics.observe_upstream(name, &instance.base, "timeout");
                tracing::warn!(
                    upstream = name,
                    instance = %instance.base,
                    request_id = %super::current_request_id(),
                    "upstream instance timed out"
                );
                return Err(ForwardError::Timeout);
            }
            Err(error) => {
                metrics.observe_upstream(name, &instance.base, "failed");
                let cause = crate::egress::error_chain(&error);
                let not_sent = error.is_connect();
                if not_sent {
                    instance.set_healthy(false, name, &cause);
                }
                tracing::warn!(
                    upstream = name,
                    instance = %instance.base,
                    request_id = %super::current_request_id(),
                    error = cause,
                    "upstream request failed"
                );
                last_error = Some(cause);
                // A request the instance may have started on is sent again
                // only when repeating it is harmless.
                if !replayable || !(not_sent || idempotent) {
                    break;
                }
            }
        }
    }
    match (tried, last_error) {
        (0, _) => Err(ForwardError::Unavailable),
        (_, Some(error)) => Err(ForwardError::Failed(error)),
        (_, None) => Err(ForwardError::Unavailable),
    }
}

/// Copies the client's headers without the hop-by-hop ones.
fn forwarded_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = headers.clone();
    for name in HOP_BY_HOP {
        out.remove(*name);
    }
    out
}

fn into_response(response: reqwest::Response) -> Response<Body> {
    let response: Response<reqwest::Body> = response.into();
    let (mut parts, body) = response.into_parts();
    for name in HOP_BY_HOP {
        parts.headers.remove(*name);
    }
    Response::from_parts(parts, Body::new(body))
}

/// Checks every instance of every remote upstream at `interval`, for as
/// long as the process runs.
pub async fn check_health(table: Arc<RoutingTable>, client: reqwest::Client, interval: Duration) {
    let pools = table.remote_pools();
    if pools.is_empty() {
        return;
    }
    // The first check comes one interval after start; until then every
    // instance counts as healthy and a failed request takes it out.
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        for (name, upstream) in &pools {
            let Upstream::Remote(pool) = upstream.as_ref() else { continue };
            for instance in &pool.instances {
                let probe =
                    client.get(format!("{}/healthz", instance.base)).timeout(interval.min(Duration::from_secs(5)));
                match probe.send().await {
                    Ok(response) if response.status() == StatusCode::OK => instance.set_healthy(true, name, ""),
                    Ok(response) => {
                        instance.set_healthy(false, name, &format!("/healthz returned {}", response.status()))
                    }
                    Err(error) => instance.set_healthy(false, name, &crate::egress::error_chain(&error)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::settings::RouteSetting;

    #[test]
    fn longest_prefix_wins_and_missing_roles_are_named() {
        let settings = GatewaySettings::default();
        let table = RoutingTable::new(&settings, |_| Some(Router::new())).expect("table");
        assert_eq!(table.lookup("/api/v1/me").map(|r| r.name.as_str()), Some("api"));
        assert_eq!(table.lookup("/oauth2/token").map(|r| r.name.as_str()), Some("idp"));
        assert_eq!(table.lookup("/login").map(|r| r.name.as_str()), Some("idp"));
        assert_eq!(table.lookup("/loginx").map(|r| r.name.as_str()), Some("trac"));
        assert_eq!(table.lookup("/wiki/WikiStart").map(|r| r.name.as_str()), Some("trac"));

        let error = RoutingTable::new(&settings, |name| (name != "api").then(Router::new)).err().expect("no api");
        assert!(error.to_string().contains("[gateway.upstreams]"), "{error}");

        let mut settings = GatewaySettings::default();
        settings.upstreams.insert("api".into(), vec!["https://127.0.0.1:9001".into(), "https://127.0.0.1:9002".into()]);
        settings.routes.push(RouteSetting { prefix: "/api/v2/".into(), upstream: "api".into() });
        let table = RoutingTable::new(&settings, |_| Some(Router::new())).expect("table");
        let pools = table.remote_pools();
        assert_eq!(pools.len(), 1);
        let Upstream::Remote(pool) = pools[0].1.as_ref() else { unreachable!("remote") };
        assert_eq!(pool.instances.len(), 2);
    }
}
