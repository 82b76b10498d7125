//! The gateway's listeners: HTTPS with the certificate reload, the plain
//! HTTP redirect, and the limits on connections and request heads.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::Uri;
use axum::middleware;
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;
use axum_server::Handle;

use super::settings::GatewaySettings;
use super::{Gateway, health, limits, redirect_layer, router};

/// The bound addresses of a running gateway.
pub struct Listeners {
    pub https: TcpListener,
    pub http: TcpListener,
}

impl Listeners {
    pub fn bind(https: SocketAddr, http: SocketAddr) -> Result<Listeners> {
        let https = TcpListener::bind(https)
            .with_context(|| format!("cannot listen on {https} for HTTPS; is another server using it?"))?;
        let http = TcpListener::bind(http)
            .with_context(|| format!("cannot listen on {http} for HTTP; is another server using it?"))?;
        https.set_nonblocking(true)?;
        http.set_nonblocking(true)?;
        Ok(Listeners { https, http })
    }
}

/// Wraps each accepted connection: refuses it when its address has too
/// many open, and closes it when it stays idle too long.
#[derive(Clone)]
struct LimitAcceptor {
    counter: limits::ConnectionCounter,
    per_client: usize,
    idle: Duration,
}

impl<S: Send + 'static> axum_server::accept::Accept<tokio::net::TcpStream, S> for LimitAcceptor {
    type Stream = limits::IdleStream<tokio::net::TcpStream>;
    type Service = S;
    type Future = std::future::Ready<std::io::Result<(Self::Stream, S)>>;

    fn accept(&self, stream: tokio::net::TcpStream, service: S) -> Self::Future {
        let result = stream.peer_addr().and_then(|peer| {
            let permit = self.counter.acquire(peer.ip(), self.per_client).ok_or_else(|| {
                tracing::warn!(target: "learntrac::security", limit = self.per_client, "connection refused: too many open from one address");
                std::io::Error::other("too many connections from one address")
            })?;
            let _ = stream.set_nodelay(true);
            Ok((limits::IdleStream::new(stream, self.idle, permit), service))
        });
        std::future::ready(result)
    }
}

/// Applies the header time limit to a server, and a hard limit on the
/// request head at four times `max_header_bytes`. Heads between the two
/// limits reach the gateway, which returns 431 with its headers and a log
/// line; larger ones get hyper's bare 431 and a closed connection.
fn limit_http<A: axum_server::Address, Acc>(server: &mut axum_server::Server<A, Acc>, settings: &GatewaySettings) {
    let hard_limit = settings.max_header_bytes.saturating_mul(4);
    let builder = server.http_builder();
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(settings.header_read_seconds))
        .max_buf_size(hard_limit.max(8192));
    builder.http2().timer(hyper_util::rt::TokioTimer::new()).max_header_list_size(hard_limit as u32);
}

/// Serves HTTPS and the HTTP redirect until `shutdown` completes.
pub async fn serve(
    gateway: Arc<Gateway>,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let state = gateway.app.clone();
    let settings = gateway.settings.clone();
    let https_addr = listeners.https.local_addr()?;
    let http_addr = listeners.http.local_addr()?;
    let certificate = crate::tls::CertificateFiles::resolve(
        &state.config.data_dir,
        state.config.tls_cert.as_deref(),
        state.config.tls_key.as_deref(),
        &public_hostnames(&state.config.public_url),
    )?;
    let tls = crate::tls::rustls_config(certificate.server_config()?);
    tokio::spawn(crate::tls::watch(certificate, tls.clone()));
    gateway.spawn_health_checks();

    let acceptor = LimitAcceptor {
        counter: limits::ConnectionCounter::default(),
        per_client: settings.connections_per_client,
        idle: Duration::from_secs(settings.idle_seconds),
    };
    let handle: Handle<SocketAddr> = Handle::new();
    let app = router(gateway.clone());
    let mut https = axum_server::from_tcp(listeners.https)?
        .acceptor(axum_server::tls_rustls::RustlsAcceptor::new(tls).acceptor(acceptor.clone()))
        .handle(handle.clone());
    limit_http(&mut https, &settings);
    let https = https.serve(app.into_make_service_with_connect_info::<SocketAddr>());

    let public_url = state.config.public_url.clone();
    let redirect = Router::new()
        .route("/health", get(health))
        .fallback(move |request: Request<Body>| {
            let target = redirect_target(&public_url, request.uri());
            async move { Redirect::permanent(&target).into_response() }
        })
        .layer(middleware::from_fn_with_state(gateway.clone(), redirect_layer))
        .with_state(gateway.clone());
    let mut http = axum_server::from_tcp(listeners.http)?.acceptor(acceptor).handle(handle.clone());
    limit_http(&mut http, &settings);
    let http = http.serve(redirect.into_make_service_with_connect_info::<SocketAddr>());

    tracing::info!(https = %https_addr, http = %http_addr, public_url = %state.config.public_url, "gateway listening");
    let shutdown_handle = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down");
        shutdown_handle.graceful_shutdown(Some(Duration::from_secs(10)));
    });
    tokio::try_join!(https, http).context("the gateway stopped with an error")?;
    state.store.close().await;
    Ok(())
}

fn public_hostnames(public_url: &str) -> Vec<String> {
    public_url
        .parse::<Uri>()
        .ok()
        .and_then(|uri| uri.host().map(|h| h.trim_matches(['[', ']']).to_string()))
        .into_iter()
        .collect()
}

/// Returns the HTTPS address for a plain HTTP request: the same path and
/// query on the public URL. The client's `Host` header is not trusted.
pub(super) fn redirect_target(public_url: &str, uri: &Uri) -> String {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    format!("{}{path}", public_url.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_keeps_path_on_public_url() {
        let uri: Uri = "/wiki/WikiStart?x=1".parse().expect("uri");
        assert_eq!(
            redirect_target("https://learn.example:8443", &uri),
            "https://learn.example:8443/wiki/WikiStart?x=1"
        );
        assert_eq!(redirect_target("https://learn.example/", &"/".parse().expect("uri")), "https://learn.example/");
    }
}
