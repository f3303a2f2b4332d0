//! Offering load: closed-loop workers or Poisson arrivals, timed against one window.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio::time::Instant;

use bytes::Bytes;
use prism_protocol::grpc::flow;
use tonic::codegen::http;

use super::outbox::Coalesced;
use super::report::{Errors, Point};
use super::workload::{Request, Workload};
use super::{Load, Window};
use crate::v2::HEADER_LENGTH;

/// How requests reach the server.
#[derive(Clone, Debug)]
pub enum Transport {
    /// REST: `POST {url}{workload.path}`, over a pool of HTTP/1.1 connections.
    Http { client: reqwest::Client, url: String },
    /// gRPC over HTTP/2 connections, each multiplexing many calls: worker `w` uses
    /// `connections[w % len]`.
    Grpc {
        connections: Vec<H2>,
        /// `{url}/inference.GRPCInferenceService/ModelInfer`.
        method: http::Uri,
        timeout: Duration,
        /// The call's `grpc-timeout` header: `timeout`, as gRPC spells it.
        grpc_timeout: http::HeaderValue,
        /// `authorization`, if the server needs a token.
        token: Option<http::HeaderValue>,
    },
}

impl Transport {
    /// `connections` HTTP/2 connections to the gRPC server at `url`
    /// (`http://host:port`), opened now; each call sends `token` as a bearer token.
    pub async fn grpc(
        url: &str,
        connections: usize,
        timeout: Duration,
        token: Option<&str>,
    ) -> anyhow::Result<Transport> {
        let token = token
            .map(|t| http::HeaderValue::from_str(&format!("Bearer {t}")))
            .transpose()
            .map_err(|_| anyhow::anyhow!("the token must be printable ASCII"))?;
        let origin: http::Uri = url
            .parse()
            .map_err(|e| anyhow::anyhow!("the gRPC URL {url:?} is not a URL: {e}"))?;
        // Cleartext HTTP/2 only, at the root: the method's path follows the authority.
        if origin.scheme_str() != Some("http") || !matches!(origin.path(), "" | "/") {
            anyhow::bail!("the gRPC URL must be http://host:port (no TLS, no path), got {url:?}");
        }
        let method = format!("http://{}{MODEL_INFER}", origin.authority().map_or("", |a| a.as_str()))
            .parse()
            .map_err(|e| anyhow::anyhow!("the gRPC URL {url:?} makes no method URL: {e}"))?;
        let mut opened = Vec::new();
        for _ in 0..connections.max(1) {
            opened.push(
                H2::connect(&origin)
                    .await
                    .map_err(|e| anyhow::anyhow!("connecting to the gRPC server at {url}: {e}"))?,
            );
        }
        Ok(Transport::Grpc {
            connections: opened,
            method,
            timeout,
            grpc_timeout: grpc_timeout(timeout),
            token,
        })
    }
}

/// The path of Triton's `ModelInfer`.
const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

/// `timeout` as a `grpc-timeout` value: at most 8 digits, in the finest unit that holds it.
fn grpc_timeout(timeout: Duration) -> http::HeaderValue {
    let (micros, millis, secs) = (timeout.as_micros(), timeout.as_millis(), timeout.as_secs());
    let value = match () {
        _ if micros < 100_000_000 => format!("{micros}u"),
        _ if millis < 100_000_000 => format!("{millis}m"),
        _ => format!("{}S", secs.min(99_999_999)),
    };
    http::HeaderValue::from_str(&value).expect("digits and a unit")
}

/// One HTTP/2 connection, driven with `h2` itself: a call opens its stream and writes
/// its message from its own task (no channel, dispatch task or body task of an HTTP
/// client between: the load generator shares this machine's cores with the server being
/// measured), and the requests of calls made together are written together
/// ([`Coalesced`]). Its windows and frames are the server's ([`flow`]).
#[derive(Clone, Debug)]
pub struct H2(h2::client::SendRequest<Bytes>);

impl H2 {
    async fn connect(origin: &http::Uri) -> anyhow::Result<H2> {
        let host = origin.host().ok_or_else(|| anyhow::anyhow!("no host in {origin}"))?;
        let port = origin.port_u16().unwrap_or(80);
        let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port)).await?;
        tcp.set_nodelay(true)?;
        let (tcp, writer) = Coalesced::new(tcp);
        tokio::spawn(writer);
        // Before the server's SETTINGS arrive, open no more streams than any server
        // allows (hyper's client did the same); no pushes.
        let (send, connection) = h2::client::Builder::new()
            .initial_max_send_streams(100)
            .enable_push(false)
            .initial_window_size(flow::STREAM_WINDOW)
            .initial_connection_window_size(flow::CONNECTION_WINDOW)
            .max_frame_size(flow::MAX_FRAME)
            .handshake(tcp)
            .await?;
        // A connection that fails shows as its calls' errors.
        tokio::spawn(connection);
        Ok(H2(send))
    }

    /// One unary call, its body `message` (a framed message, see
    /// [`super::workload::grpc_frame`]): the whole answer is read, as REST's is, and the
    /// call is good when its `grpc-status` (in the trailers, or in the headers of an
    /// answer without a body) is 0.
    async fn call(&self, request: http::Request<()>, message: Bytes) -> Result<(), String> {
        let transport = |_| "transport".to_owned();
        let mut send = self.0.clone().ready().await.map_err(transport)?;
        let (response, mut body) = send.send_request(request, false).map_err(transport)?;
        body.send_data(message, true).map_err(transport)?;
        let response = response.await.map_err(transport)?;
        if response.status() != http::StatusCode::OK {
            return Err(format!("http_{}", response.status().as_u16()));
        }
        let (parts, mut body) = response.into_parts();
        if let Some(status) = tonic::Status::from_header_map(&parts.headers) {
            return code(&status);
        }
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|_| "body".to_owned())?;
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        let trailers = body.trailers().await.map_err(|_| "body".to_owned())?;
        match trailers.as_ref().and_then(tonic::Status::from_header_map) {
            Some(status) => code(&status),
            None => Err("grpc_no_status".into()),
        }
    }
}

/// A call's outcome from its gRPC status.
fn code(status: &tonic::Status) -> Result<(), String> {
    match status.code() {
        tonic::Code::Ok => Ok(()),
        c => Err(format!("grpc_{c:?}").to_lowercase()),
    }
}

/// Latencies are recorded in microseconds, up to 10 minutes, to 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// One request from worker `w` (its slot's variant `i`); `Err` carries the error's kind.
async fn send(transport: &Transport, path: &str, workload: &Workload, w: usize, i: usize) -> Result<(), String> {
    let slot = &workload.requests[w % workload.requests.len()];
    match (&slot[i % slot.len()], transport) {
        (Request::Http { body, header_len }, Transport::Http { client, url }) => {
            let mut request = client.post(format!("{url}{path}")).body(body.clone());
            request = match header_len {
                Some(n) => request
                    .header(HEADER_LENGTH, *n)
                    .header("Content-Type", "application/octet-stream"),
                None => request.header("Content-Type", "application/json"),
            };
            let response = request.send().await.map_err(|e| error_kind(&e))?;
            let status = response.status();
            // Read the whole answer: a request is done when its last byte has arrived.
            response.bytes().await.map_err(|e| error_kind(&e))?;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("http_{}", status.as_u16()))
            }
        }
        (
            Request::Grpc(framed),
            Transport::Grpc {
                connections,
                method,
                timeout,
                grpc_timeout,
                token,
            },
        ) => {
            let mut request = http::Request::post(method.clone())
                .header(http::header::CONTENT_TYPE, "application/grpc")
                .header(http::header::TE, "trailers")
                .header("grpc-timeout", grpc_timeout.clone());
            if let Some(t) = token {
                request = request.header(http::header::AUTHORIZATION, t.clone());
            }
            let request = request.body(()).expect("a method URL and valid headers");
            // The server keeps to the call's grpc-timeout; the client does too, so that a
            // server that stops answering (or a lost connection) ends the call.
            let connection = &connections[w % connections.len()];
            match tokio::time::timeout(*timeout, connection.call(request, framed.clone())).await {
                Err(_) => Err("timeout".into()),
                Ok(r) => r,
            }
        }
        _ => Err("protocol_mismatch".into()),
    }
}

fn error_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "transport"
    }
    .into()
}

/// Shows elapsed time and requests so far, until `end`.
fn progress(
    bar: Option<ProgressBar>,
    done: Arc<AtomicU64>,
    start: Instant,
    end: Instant,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(bar) = bar else { return };
        let total = (end - start).as_secs_f64();
        bar.set_length((total * 10.0) as u64);
        let mut last = (Instant::now(), 0u64);
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = Instant::now();
            let n = done.load(Ordering::Relaxed);
            let rate = (n - last.1) as f64 / (now - last.0).as_secs_f64();
            last = (now, n);
            bar.set_position(((now - start).as_secs_f64() * 10.0) as u64);
            bar.set_message(format!("{n} requests, {rate:.0}/s"));
            if now >= end {
                break;
            }
        }
        bar.finish_and_clear();
    })
}

/// Runs one point of a run over REST and measures it.
pub async fn run_point(
    http: &reqwest::Client,
    base_url: &str,
    workload: &Workload,
    load: Load,
    window: Window,
    bar: Option<ProgressBar>,
) -> Point {
    let transport = Transport::Http {
        client: http.clone(),
        url: base_url.trim_end_matches('/').to_owned(),
    };
    run_point_over(&transport, workload, load, window, bar).await
}

/// Runs one point of a run over `transport` and measures it.
pub async fn run_point_over(
    transport: &Transport,
    workload: &Workload,
    load: Load,
    window: Window,
    bar: Option<ProgressBar>,
) -> Point {
    let path = workload.path.as_str();
    let start = Instant::now();
    let measure_from = start + window.warmup;
    let end = measure_from + window.duration;
    let done = Arc::new(AtomicU64::new(0));
    let ticker = progress(bar, Arc::clone(&done), start, end);
    let (hist, errors) = match load {
        Load::Closed { concurrency } => closed(transport, path, workload, concurrency, measure_from, end, &done).await,
        Load::Open { rate, max_in_flight } => {
            open(
                transport,
                path,
                workload,
                rate,
                max_in_flight,
                measure_from,
                end,
                window.timeout,
                &done,
            )
            .await
        }
    };
    ticker.abort();
    Point::new(load, workload, window.duration, &hist, errors)
}

async fn closed(
    transport: &Transport,
    path: &str,
    workload: &Workload,
    concurrency: usize,
    measure_from: Instant,
    end: Instant,
    done: &Arc<AtomicU64>,
) -> (Histogram<u64>, Errors) {
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|w| {
            let (transport, path, workload, done) =
                (transport.clone(), path.to_owned(), workload.clone(), Arc::clone(done));
            tokio::spawn(async move {
                let mut hist = histogram();
                let mut errors = Errors::default();
                let mut i = w;
                loop {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    let outcome = send(&transport, &path, &workload, w, i).await;
                    let t1 = Instant::now();
                    done.fetch_add(1, Ordering::Relaxed);
                    if t0 >= measure_from && t1 <= end {
                        match outcome {
                            Ok(()) => hist.saturating_record((t1 - t0).as_micros() as u64),
                            Err(kind) => errors.add(&kind),
                        }
                    }
                    i += concurrency;
                }
                (hist, errors)
            })
        })
        .collect();
    let mut hist = histogram();
    let mut errors = Errors::default();
    for w in workers {
        let (h, e) = w.await.expect("a load worker does not panic");
        hist.add(&h).expect("histograms with the same bounds merge");
        errors.merge(e);
    }
    (hist, errors)
}

#[allow(clippy::too_many_arguments)]
async fn open(
    transport: &Transport,
    path: &str,
    workload: &Workload,
    rate: f64,
    max_in_flight: usize,
    measure_from: Instant,
    end: Instant,
    timeout: Duration,
    done: &Arc<AtomicU64>,
) -> (Histogram<u64>, Errors) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Instant, Result<(), String>)>();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut errors = Errors::default();
    // Arrival times come from a thread of their own: tokio's timer ticks in milliseconds,
    // too coarse for thousands of arrivals per second, while a thread's sleep wakes within
    // tens of microseconds. Each request is timed from its scheduled start, so any lag
    // in starting it is charged to the latency, not hidden.
    let (arrivals_tx, mut arrivals) = mpsc::unbounded_channel::<Instant>();
    let end_std = end.into_std();
    std::thread::Builder::new()
        .name("prism-bench-arrivals".into())
        .spawn(move || {
            let mut rng = rand::rngs::StdRng::from_os_rng();
            let mut next = std::time::Instant::now();
            loop {
                // Exponential gaps: a Poisson process of `rate` arrivals per second.
                next += Duration::from_secs_f64(-(1.0 - rng.random::<f64>()).ln() / rate);
                if next >= end_std {
                    break;
                }
                if let Some(wait) = next.checked_duration_since(std::time::Instant::now()) {
                    std::thread::sleep(wait);
                }
                if arrivals_tx.send(Instant::from_std(next)).is_err() {
                    break;
                }
            }
        })
        .expect("spawn the arrivals thread");
    let mut i = 0usize;
    while let Some(scheduled) = arrivals.recv().await {
        if in_flight.load(Ordering::Relaxed) >= max_in_flight {
            if scheduled >= measure_from {
                errors.add("client_overload");
            }
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let (transport, path, workload, tx, in_flight, done) = (
            transport.clone(),
            path.to_owned(),
            workload.clone(),
            tx.clone(),
            Arc::clone(&in_flight),
            Arc::clone(done),
        );
        let index = i;
        tokio::spawn(async move {
            let outcome = send(&transport, &path, &workload, index, index).await;
            let finished = Instant::now();
            in_flight.fetch_sub(1, Ordering::Relaxed);
            done.fetch_add(1, Ordering::Relaxed);
            let _ = tx.send((scheduled, finished, outcome));
        });
        i += 1;
    }
    drop(tx);
    let mut hist = histogram();
    // Requests still out after the window are waited for up to the request timeout; they
    // ended outside the window, so they do not count either way.
    let _ = tokio::time::timeout(timeout + Duration::from_secs(1), async {
        while let Some((scheduled, finished, outcome)) = rx.recv().await {
            if scheduled >= measure_from && finished <= end {
                match outcome {
                    Ok(()) => hist.saturating_record((finished - scheduled).as_micros() as u64),
                    Err(kind) => errors.add(&kind),
                }
            }
        }
    })
    .await;
    (hist, errors)
}
