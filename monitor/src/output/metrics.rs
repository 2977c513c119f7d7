//! The `--metrics ADDR:PORT` endpoint: Prometheus scrapes `GET /metrics` for the per-call-site
//! flush counts, the number of call sites, the events lost and how wqflush is attached.
//!
//! The daemon owns the counts; it publishes them as a [`Snapshot`] behind a mutex, and every
//! scrape renders that snapshot into a fresh registry. Counters are therefore the absolute totals
//! since wqflush started, which is what Prometheus expects of a counter.

use std::convert::Infallible;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::{EncodeLabelSet, prometheus_text};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info as InfoMetric;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// The only path served.
pub const PATH: &str = "/metrics";

/// A client gets this long to send its request headers, so idle or stalled connections do not pile
/// up in a long-running daemon.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// One call site's flushes of one system workqueue.
#[derive(Clone, Debug, Default)]
pub struct SiteMetric {
    pub wq: String,
    pub caller: String,
    /// "" when built in.
    pub module: String,
    pub count: u64,
    /// `--waits`: the kernel's wait figures for the site, once a flush from it returned.
    pub waits: Option<monitor_ebpf::WaitStats>,
    /// `--waits`: its flushes reported stuck (None without --waits).
    pub stuck: Option<u64>,
}

/// What a scrape reports; the daemon replaces or updates it as events arrive.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub sites: Vec<SiteMetric>,
    pub lost: u64,
    /// Flushes the kernel did not run the probe for; None where it keeps no such count.
    pub missed: Option<u64>,
}

/// Facts fixed for the life of the process, exported as `wqflush_info`.
#[derive(Clone, Debug)]
pub struct Info {
    /// `kprobe-multi`, `fentry` or `kprobe`.
    pub attach: String,
    /// `uname -r`.
    pub kernel: String,
    /// `address` or `name`.
    pub kallsyms_mode: String,
}

pub type Shared = Arc<Mutex<Snapshot>>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SiteLabels {
    wq: String,
    caller: String,
    module: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    attach: String,
    kernel: String,
    kallsyms_mode: String,
}

/// "9101" -> 127.0.0.1:9101 (loopback unless an address is given: kernel call sites are nobody
/// else's business by default); "0.0.0.0:9101", "[::1]:9101" as given.
pub fn parse_addr(s: &str) -> Result<SocketAddr> {
    let s = s.trim();
    let addr = match s.parse::<u16>() {
        Ok(port) => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
        Err(_) => s.parse::<SocketAddr>().map_err(|_| {
            anyhow!(
                "invalid metrics address {s:?}: expected PORT, IPV4:PORT or [IPV6]:PORT \
                 (e.g. 9101, 0.0.0.0:9101, [::1]:9101){}",
                addr_hint(s)
            )
        })?,
    };
    if addr.port() == 0 {
        // The kernel would pick a random port, which Prometheus could not be told about.
        return Err(anyhow!(
            "invalid metrics address {s:?}: port 0 is not a usable port; give a fixed one such as 9101"
        ));
    }
    Ok(addr)
}

/// Why a metrics address did not parse, for the common mistakes.
fn addr_hint(s: &str) -> &'static str {
    const BRACKETS: &str = "; write an IPv6 address in brackets before the port, e.g. [::1]:9101";
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => "; the port is missing",
        // `::1:9101` is itself an IPv6 address: without brackets the port cannot be told apart.
        Ok(IpAddr::V6(_)) => BRACKETS,
        Err(_) if s.matches(':').count() > 1 && !s.starts_with('[') => BRACKETS,
        Err(_)
            if s.rsplit_once(':')
                .is_some_and(|(host, _)| host.contains(char::is_alphabetic)) =>
        {
            "; host names are not resolved, give an IP address (127.0.0.1 for localhost)"
        }
        Err(_) => "",
    }
}

/// The exposition text (Prometheus text format 0.0.4) for one scrape.
pub fn render(info: &Info, snap: &Snapshot) -> Result<String> {
    let mut registry = Registry::default();
    // The registry adds the `_total` suffix of counters, `_info` of infos, and a final period.
    registry.register(
        "wqflush_flushes",
        "Flushes of a kernel-global (system_*) workqueue, by workqueue and call site (caller function and module, empty for built-in code)",
        flushes(snap),
    );
    registry.register(
        "wqflush_call_sites",
        "Distinct call sites seen flushing a system workqueue",
        ConstGauge::new(snap.sites.len()),
    );
    registry.register(
        "wqflush_events_lost",
        "First sightings of call sites the kernel could not deliver because the ring buffer was full; their flushes are still counted",
        ConstCounter::new(snap.lost),
    );
    if let Some(missed) = snap.missed {
        registry.register(
            "wqflush_probe_missed",
            "Flushes the kernel did not run the probe for, by its own counters (recursion_misses, kprobe missed); absent where this kernel keeps no such count",
            ConstCounter::new(missed),
        );
    }
    let info_labels = InfoLabels {
        attach: info.attach.clone(),
        kernel: info.kernel.clone(),
        kallsyms_mode: info.kallsyms_mode.clone(),
    };
    registry.register(
        "wqflush",
        "How wqflush watches: probe type (kprobe-multi, fentry or kprobe), kernel release, and whether system workqueues are recognized by address or by name",
        InfoMetric::new(info_labels),
    );
    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry).context("cannot encode the metrics")?;
    wait_histogram(&mut text, snap);
    stuck_counter(&mut text, snap);
    Ok(text)
}

/// `--waits`: `wqflush_flush_wait_seconds`, from the kernel's per-site buckets (the client
/// library builds histograms from observations only, so the text is written here).
fn wait_histogram(text: &mut String, snap: &Snapshot) {
    use std::fmt::Write as _;
    let mut series: Vec<(SiteLabels, monitor_ebpf::WaitStats)> = Vec::new();
    for site in &snap.sites {
        let Some(w) = site.waits else { continue };
        let labels = SiteLabels {
            wq: site.wq.clone(),
            caller: site.caller.clone(),
            module: site.module.clone(),
        };
        match series.iter_mut().find(|(l, _)| *l == labels) {
            Some((_, s)) => {
                s.waits += w.waits;
                s.total_ns += w.total_ns;
                for (b, n) in s.buckets.iter_mut().zip(w.buckets) {
                    *b += n;
                }
            }
            None => series.push((labels, w)),
        }
    }
    if series.is_empty() {
        return;
    }
    text.push_str(
        "# HELP wqflush_flush_wait_seconds How long offending flushes waited until they returned (--waits), by workqueue and call site.\n\
         # TYPE wqflush_flush_wait_seconds histogram\n",
    );
    for (l, w) in series {
        let labels = format!(
            "wq=\"{}\",caller=\"{}\",module=\"{}\"",
            escape(&l.wq),
            escape(&l.caller),
            escape(&l.module)
        );
        let mut cumulative = 0;
        for (i, n) in w.buckets.iter().enumerate() {
            cumulative += n;
            let le = match monitor_ebpf::WAIT_BOUNDS_NS.get(i) {
                Some(&ns) => format!("{}", ns as f64 / 1e9),
                None => "+Inf".into(),
            };
            let _ = writeln!(
                text,
                "wqflush_flush_wait_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            text,
            "wqflush_flush_wait_seconds_sum{{{labels}}} {}",
            w.total_ns as f64 / 1e9
        );
        let _ = writeln!(
            text,
            "wqflush_flush_wait_seconds_count{{{labels}}} {}",
            w.waits
        );
    }
}

/// `--waits`: `wqflush_stuck_flushes_total`, per site (sites of one label set summed). Written
/// after the registry's text, like the histogram.
fn stuck_counter(text: &mut String, snap: &Snapshot) {
    use std::fmt::Write as _;
    let mut series: Vec<(SiteLabels, u64)> = Vec::new();
    for site in &snap.sites {
        let Some(n) = site.stuck else { continue };
        let labels = SiteLabels {
            wq: site.wq.clone(),
            caller: site.caller.clone(),
            module: site.module.clone(),
        };
        match series.iter_mut().find(|(l, _)| *l == labels) {
            Some((_, m)) => *m += n,
            None => series.push((labels, n)),
        }
    }
    if series.is_empty() {
        return;
    }
    text.push_str(
        "# HELP wqflush_stuck_flushes Offending flushes reported stuck (still waiting after --stuck-after; --waits), by workqueue and call site.\n\
         # TYPE wqflush_stuck_flushes counter\n",
    );
    for (l, n) in series {
        let _ = writeln!(
            text,
            "wqflush_stuck_flushes_total{{wq=\"{}\",caller=\"{}\",module=\"{}\"}} {n}",
            escape(&l.wq),
            escape(&l.caller),
            escape(&l.module)
        );
    }
}

/// A label value in the text format: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One counter per label set. Sites that differ only in what the labels leave out (the offset
/// within the caller, the stack) become one series, so their counts add up.
fn flushes(snap: &Snapshot) -> Family<SiteLabels, Counter> {
    let family = Family::<SiteLabels, Counter>::default();
    for site in &snap.sites {
        let labels = SiteLabels {
            wq: site.wq.clone(),
            caller: site.caller.clone(),
            module: site.module.clone(),
        };
        family.get_or_create(&labels).inc_by(site.count);
    }
    family
}

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
    match render(info, &snap) {
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
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn info() -> Info {
        Info {
            attach: "fentry".into(),
            kernel: "6.1.0-56-amd64".into(),
            kallsyms_mode: "address".into(),
        }
    }

    fn site(wq: &str, caller: &str, module: &str, count: u64) -> SiteMetric {
        SiteMetric {
            wq: wq.into(),
            caller: caller.into(),
            module: module.into(),
            count,
            waits: None,
            stuck: None,
        }
    }

    fn sample() -> Snapshot {
        Snapshot {
            sites: vec![
                site(
                    "system_unbound_wq",
                    "wqflush_test_flush_pointer",
                    "wqflush_test",
                    4,
                ),
                site(
                    "system_wq",
                    "wqflush_test_flush_scheduled",
                    "wqflush_test",
                    3,
                ),
                site(
                    "system_wq",
                    "wqflush_test_flush_scheduled",
                    "wqflush_test",
                    2,
                ),
                site("system_long_wq", "rfkill_fop_release", "", 1),
            ],
            lost: 7,
            missed: Some(3),
        }
    }

    #[test]
    fn parse_addr_accepts_port_and_socket_addresses() {
        for (input, want) in [
            ("9101", "127.0.0.1:9101"),
            (" 9101 ", "127.0.0.1:9101"),
            ("0.0.0.0:9101", "0.0.0.0:9101"),
            ("192.0.2.1:80", "192.0.2.1:80"),
            ("[::1]:9101", "[::1]:9101"),
            ("[::]:9101", "[::]:9101"),
        ] {
            let got = parse_addr(input).unwrap_or_else(|e| panic!("{input:?}: {e:#}"));
            assert_eq!(got.to_string(), want, "{input:?}");
        }
    }

    #[test]
    fn parse_addr_rejects_with_a_reason() {
        for (input, reason) in [
            ("", "expected PORT"),
            ("metrics", "expected PORT"),
            ("70000", "expected PORT"),
            ("127.0.0.1", "port is missing"),
            ("::1", "brackets"),
            ("fe80::1%eth0:9101", "brackets"),
            ("::1:9101", "brackets"),
            ("localhost:9101", "host names are not resolved"),
            ("0", "port 0"),
            ("127.0.0.1:0", "port 0"),
        ] {
            let err = format!("{:#}", parse_addr(input).expect_err(input));
            assert!(err.contains(reason), "{input:?}: {err}");
            assert!(err.contains(&format!("{input:?}")), "{input:?}: {err}");
        }
    }

    #[test]
    fn render_sums_sites_and_exports_every_metric() {
        let text = render(&info(), &sample()).expect("render");
        for line in [
            "# HELP wqflush_flushes_total Flushes of a kernel-global (system_*) workqueue, by workqueue and call site (caller function and module, empty for built-in code).",
            "# TYPE wqflush_flushes_total counter",
            r#"wqflush_flushes_total{wq="system_unbound_wq",caller="wqflush_test_flush_pointer",module="wqflush_test"} 4"#,
            r#"wqflush_flushes_total{wq="system_wq",caller="wqflush_test_flush_scheduled",module="wqflush_test"} 5"#,
            r#"wqflush_flushes_total{wq="system_long_wq",caller="rfkill_fop_release",module=""} 1"#,
            "# TYPE wqflush_call_sites gauge",
            "wqflush_call_sites 4",
            "# TYPE wqflush_events_lost_total counter",
            "wqflush_events_lost_total 7",
            "# TYPE wqflush_probe_missed_total counter",
            "wqflush_probe_missed_total 3",
            "# TYPE wqflush_info gauge",
            r#"wqflush_info{attach="fentry",kernel="6.1.0-56-amd64",kallsyms_mode="address"} 1"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(
            !text.contains("# EOF"),
            "OpenMetrics marker in Prometheus text:\n{text}"
        );
    }

    #[test]
    fn waits_render_a_cumulative_histogram() {
        let mut s = site("system_wq", "slow_flush", "foo", 2);
        let mut w = monitor_ebpf::WaitStats {
            waits: 2,
            total_ns: 700_000_000,
            max_ns: 500_000_000,
            ..Default::default()
        };
        w.buckets[5] = 1; // <= 100 ms
        w.buckets[6] = 1; // <= 1 s
        s.waits = Some(w);
        let snap = Snapshot {
            sites: vec![s],
            lost: 0,
            missed: None,
        };
        let text = render(&info(), &snap).expect("render");
        let labels = r#"wq="system_wq",caller="slow_flush",module="foo""#;
        for line in [
            "# TYPE wqflush_flush_wait_seconds histogram".to_owned(),
            format!(r#"wqflush_flush_wait_seconds_bucket{{{labels},le="0.01"}} 0"#),
            format!(r#"wqflush_flush_wait_seconds_bucket{{{labels},le="0.1"}} 1"#),
            format!(r#"wqflush_flush_wait_seconds_bucket{{{labels},le="1"}} 2"#),
            format!(r#"wqflush_flush_wait_seconds_bucket{{{labels},le="+Inf"}} 2"#),
            format!("wqflush_flush_wait_seconds_sum{{{labels}}} 0.7"),
            format!("wqflush_flush_wait_seconds_count{{{labels}}} 2"),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        let text = render(&info(), &sample()).expect("render");
        assert!(!text.contains("wait_seconds"), "{text}");
    }

    #[test]
    fn stuck_flushes_are_counted_per_label_set_with_waits_only() {
        // Two sites of one caller (two call offsets) sum into one series; a site with none
        // stuck still has its series at 0 once --waits is on.
        let stuck = |n| {
            let mut s = site("system_long_wq", "flush_self", "foo", 1);
            s.stuck = Some(n);
            s
        };
        let mut other = site("system_wq", "quiet", "", 3);
        other.stuck = Some(0);
        let snap = Snapshot {
            sites: vec![stuck(1), stuck(2), other],
            lost: 0,
            missed: None,
        };
        let text = render(&info(), &snap).expect("render");
        for line in [
            "# TYPE wqflush_stuck_flushes counter",
            r#"wqflush_stuck_flushes_total{wq="system_long_wq",caller="flush_self",module="foo"} 3"#,
            r#"wqflush_stuck_flushes_total{wq="system_wq",caller="quiet",module=""} 0"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        let text = render(&info(), &sample()).expect("render");
        assert!(!text.contains("stuck"), "{text}");
    }

    #[test]
    fn render_escapes_label_values_and_handles_no_sites() {
        let snap = Snapshot {
            sites: vec![site("system_wq", "odd\"name\\", "", 1)],
            lost: 0,
            missed: None,
        };
        let text = render(&info(), &snap).expect("render");
        assert!(text.contains(r#"caller="odd\"name\\""#), "{text}");
        let text = render(&info(), &Snapshot::default()).expect("render");
        assert!(text.lines().any(|l| l == "wqflush_call_sites 0"), "{text}");
        assert!(
            text.lines().any(|l| l == "wqflush_events_lost_total 0"),
            "{text}"
        );
        assert!(
            !text.lines().any(|l| l.starts_with("wqflush_flushes_total")),
            "{text}"
        );
        assert!(
            !text.contains("wqflush_probe_missed"),
            "no count kept, no metric: {text}"
        );
    }

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
