//! The build-server API over HTTPS, HTTP/1.1 only, as upstream's server speaks it.
//!
//! actix-web's `listen_rustls_*` offers `h2` in ALPN whenever actix-http's http2
//! feature is on (awc turns it on), and curl and reqwest (the sccache client)
//! take it. Over h2, an answer kiln gives before it has read the whole request
//! body (a 401 for a bad token, 404, 413, 503) is followed by a stream reset the
//! moment the handler drops the body, and clients report a framing error
//! instead of kiln's status and reason. h2 gains nothing measurable here
//! (BENCHMARKS.md: one client's jobs on one connection, against a pool of
//! HTTP/1.1 connections), so this listener is actix-http's HTTP/1.1 service
//! behind rustls, offering only `http/1.1` in ALPN: every client speaks HTTP/1.1.
//! (With `kiln.tls = false` the same service runs on plain TCP.)

use std::fmt;
use std::net::TcpListener;
use std::time::Duration;

use actix_http::body::MessageBody;
use actix_http::{HttpService, Request, Response};
use actix_server::ServerBuilder;
use actix_service::{map_config, IntoServiceFactory, ServiceFactory, ServiceFactoryExt};
use actix_web::dev::AppConfig;

/// How an HTTPS connection is kept and cut, as actix-web's `HttpServer` sets them.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Idle time a kept-alive connection may wait for its next request.
    pub keep_alive: Duration,
    /// Time a client has to send a request's head.
    pub request_head: Duration,
    /// Time a connection has to close after its last response.
    pub disconnect: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            keep_alive: Duration::from_secs(5),
            request_head: Duration::from_secs(5),
            disconnect: Duration::from_secs(1),
        }
    }
}

/// Adds a listener on `listener` to `builder`, serving the app `factory` makes
/// (one per worker) over HTTP/1.1 only: HTTPS with `tls`, plain HTTP without.
pub fn listen_h1<F, I, S, B>(
    builder: ServerBuilder,
    listener: TcpListener,
    tls: Option<rustls::ServerConfig>,
    limits: ConnectionLimits,
    factory: F,
) -> std::io::Result<ServerBuilder>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    B: MessageBody + 'static,
{
    let addr = listener.local_addr()?;
    // A macro, not a closure: the service's stream type differs per branch.
    macro_rules! h1_service {
        () => {
            HttpService::build()
                .keep_alive(limits.keep_alive)
                .client_request_timeout(limits.request_head)
                .client_disconnect_timeout(limits.disconnect)
                // Drop a request's handler as soon as its client hangs up, so a
                // running job is cancelled instead of holding a builder until its
                // timeout. Build clients never half-close while they wait.
                .h1_allow_half_closed(false)
                .tcp_nodelay(true)
                // The app reads nothing from its config (no connection_info, no url_for).
                .h1(map_config(factory().into_factory().map_err(|err| err.into().error_response()), |_| {
                    AppConfig::default()
                }))
        };
    }
    match tls {
        Some(mut tls) => {
            // Said explicitly, so a client that insists on ALPN still agrees on HTTP/1.1.
            tls.alpn_protocols = vec![b"http/1.1".to_vec()];
            builder.listen(format!("kiln-https-{addr}"), listener, move || h1_service!().rustls_0_23(tls.clone()))
        }
        None => builder.listen(format!("kiln-http-{addr}"), listener, move || h1_service!().tcp()),
    }
}
