//! The HTTP side of `--metrics`: binds the socket before anything is attached, then serves
//! `GET /metrics` with what [`metrics::render`] makes of the daemon's latest snapshot.

use std::convert::Infallible;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::prometheus_text;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::output::metrics::{self, Info, PATH, Shared};

/// A client gets this long to send its request headers, so idle or stalled connections do not pile
/// up in a long-running daemon.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the metrics socket, so the caller can report a bad address before attaching probes.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        let hint = match e.kind() {
            ErrorKind::AddrInUse => {
                "; another program (another wqflush?) listens there, pick another port"
            }
            ErrorKind::AddrNotAvailable => "; no interface of this machine has that address",
            ErrorKind::PermissionDenied => "; ports below 1024 need CAP_NET_BIND_SERVICE",
            _ => "",
        };
        anyhow!("cannot serve metrics on {addr}: {e}{hint}")
    })
}

/// Serves GET /metrics (200, Prometheus text format) and 404 for other paths, until the task is
/// dropped. Returns only if the listening socket itself fails.
pub async fn serve(listener: TcpListener, info: Info, shared: Shared) -> Result<()> {
    let info = Arc::new(info);
    // Connections live in this set rather than in detached tasks, so dropping `serve` closes them.
    let mut conns = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(err) => {
                survive_accept_error(err).await?;
                continue;
            }
        };
        while conns.try_join_next().is_some() {}
        let (info, shared) = (Arc::clone(&info), Arc::clone(&shared));
        conns.spawn(async move {
            let service = service_fn(move |req| {
                let response = respond(&req, &info, &shared);
                async move { Ok::<_, Infallible>(response) }
            });
            // A client that hangs up or speaks garbage only loses its own connection; there is
            // nobody to tell.
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Errors of one connection, or a passing shortage of file descriptors or memory, must not end
/// the endpoint; anything else means the listening socket is broken.
async fn survive_accept_error(err: std::io::Error) -> Result<()> {
    match err.kind() {
        ErrorKind::ConnectionAborted
        | ErrorKind::ConnectionReset
        | ErrorKind::Interrupted
        | ErrorKind::WouldBlock => Ok(()),
        _ if matches!(
            err.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        ) =>
        {
            // Back off instead of spinning: the condition holds until some descriptor is closed.
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok(())
        }
        _ => Err(err).context("metrics endpoint stopped: cannot accept connections"),
    }
}

fn respond(req: &Request<Incoming>, info: &Info, shared: &Shared) -> Response<Full<Bytes>> {
    if req.uri().path() != PATH {
        return plain(
            StatusCode::NOT_FOUND,
            format!("not found; the metrics are at {PATH}\n"),
        );
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut response = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is served\n".to_owned(),
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    // A panic elsewhere while holding the lock leaves plain counts behind, still worth serving.
    let snap = shared.lock().unwrap_or_else(PoisonError::into_inner);
    match metrics::render(info, &snap) {
        Ok(text) => body(StatusCode::OK, prometheus_text::CONTENT_TYPE, text),
        Err(err) => plain(StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}\n")),
    }
}

fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    body(status, "text/plain; charset=utf-8", text)
}

fn body(status: StatusCode, content_type: &'static str, text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::metrics::tests::{info, sample};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn get(addr: SocketAddr, request: &str) -> String {
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            stream.write_all(request.as_bytes()).await.expect("write");
            let mut response = String::new();
            stream.read_to_string(&mut response).await.expect("read");
            response
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .expect("server answered in time")
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let shared = Shared::default();
        let server = tokio::spawn(serve(listener, info(), Arc::clone(&shared)));
        // Published after the server started: a scrape must see the current snapshot.
        *shared.lock().expect("lock") = sample();

        let ok = get(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{ok}"
        );
        let (_, body) = ok.split_once("\r\n\r\n").expect("headers end");
        assert!(
            body.lines().any(|l| l == "wqflush_events_lost_total 7"),
            "{body}"
        );
        assert!(
            body.contains(r#"caller="wqflush_test_flush_scheduled",module="wqflush_test"} 5"#),
            "{body}"
        );

        let missing = get(
            addr,
            "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{missing}"
        );
        let post = get(addr, "POST /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
        assert!(
            post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{post}"
        );

        server.abort();
        assert!(server.await.expect_err("aborted").is_cancelled());
    }

    #[tokio::test]
    async fn bind_error_names_address_and_reason() {
        let first = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = first.local_addr().expect("local addr");
        let err = format!("{:#}", bind(addr).await.expect_err("port taken"));
        assert!(
            err.contains(&addr.to_string()) && err.contains("in use"),
            "{err}"
        );
    }
}
