//! The connection layer, over raw TCP where a client library would hide it: idle and
//! slow connections are closed, connections past `max_connections` wait, and a shutdown
//! under keep-alive load answers every request it read.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prism_tests::{TestServer, celsius, config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(server: &str) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("[server]\n{server}\n{}", celsius("celsius", ""));
    (TestServer::start(config(&text, dir.path())).await, dir)
}

fn addr(s: &TestServer) -> String {
    s.url.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection (or `limit` passes); what it sent.
async fn read_to_close(tcp: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| String::from_utf8_lossy(&got).into_owned())
}

const LIVE: &[u8] = b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n";

#[tokio::test]
async fn idle_connections_and_slow_heads_and_bodies_are_cut_off() {
    let (s, _dir) = start("idle_timeout_s = 2\nheader_read_timeout_s = 1\nbody_read_timeout_s = 1").await;

    // A keep-alive connection in use stays open past the idle timeout in total...
    let mut tcp = TcpStream::connect(addr(&s)).await.unwrap();
    for _ in 0..6 {
        tcp.write_all(LIVE).await.unwrap();
        let mut buf = [0u8; 1024];
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // ...and is closed once it has been idle for it.
    let closed = read_to_close(&mut tcp, Duration::from_secs(10)).await;
    assert_eq!(closed.as_deref(), Some(""), "{closed:?}");

    // A connection that never sends a byte is closed too.
    let mut silent = TcpStream::connect(addr(&s)).await.unwrap();
    assert!(read_to_close(&mut silent, Duration::from_secs(10)).await.is_some());

    // Headers trickling in (a line every 200 ms, forever) are cut off.
    let mut slow = TcpStream::connect(addr(&s)).await.unwrap();
    slow.write_all(b"GET /v2/health/live HTTP/1.1\r\n").await.unwrap();
    let trickle = async {
        for i in 0..50 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if slow.write_all(format!("x-slow-{i}: 1\r\n").as_bytes()).await.is_err() {
                return true;
            }
            let mut probe = [0u8; 1];
            if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), slow.peek(&mut probe)).await {
                return true;
            }
        }
        false
    };
    assert!(trickle.await, "a slow head kept its connection for 10 s");

    // A body that stops coming gets 408, as JSON.
    let mut body = TcpStream::connect(addr(&s)).await.unwrap();
    body.write_all(
        b"POST /v2/models/celsius/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"inputs\":",
    )
    .await
    .unwrap();
    let answer = read_to_close(&mut body, Duration::from_secs(10))
        .await
        .expect("answered and closed");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("server.body_read_timeout_s"), "{answer}");

    // The server itself is fine.
    assert!(s.client.server_live().await.unwrap());
    s.stop().await.unwrap();
}

#[tokio::test]
async fn connections_past_max_connections_wait_for_one_to_close() {
    // The test client's own keep-alive connection (from the start-up check) is one of
    // the three.
    let (s, _dir) = start("max_connections = 3").await;
    let a = TcpStream::connect(addr(&s)).await.unwrap();
    let b = TcpStream::connect(addr(&s)).await.unwrap();
    // Both are accepted and held; a third client waits in the backlog.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let url = format!("{}/v2/health/live", s.url);
    let third = tokio::spawn(async move { reqwest::get(url).await.map(|r| r.status().as_u16()) });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served past max_connections"
    );
    drop(a);
    let status = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("served once a connection closed")
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    drop(b);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_shutdown_under_keep_alive_load_answers_every_request_it_read() {
    let (mut s, _dir) = start("").await;
    let client = reqwest::Client::new();
    let url = format!("{}/v2/models/celsius/infer", s.url);
    let body = r#"{"inputs":[{"name":"INPUT0","shape":[1,1],"datatype":"FP32","data":[100]}]}"#;
    let (answered, refused, lost) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut clients = Vec::new();
    for _ in 0..32 {
        let (client, url, answered, refused, lost) = (
            client.clone(),
            url.clone(),
            Arc::clone(&answered),
            Arc::clone(&refused),
            Arc::clone(&lost),
        );
        clients.push(tokio::spawn(async move {
            loop {
                match client.post(&url).body(body).send().await {
                    Ok(r) => {
                        assert!(r.status() == 200 || r.status() == 503, "{}", r.status());
                        r.bytes().await.expect("a whole answer");
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    // The listener is closed: the request was never sent.
                    Err(e) if e.is_connect() => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Err(e) => {
                        eprintln!("lost: {e:?}");
                        lost.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = answered.load(Ordering::Relaxed);
    s.signal_shutdown();
    for c in clients {
        c.await.unwrap();
    }
    s.stop().await.unwrap();
    let [answered, refused, lost] = [answered, refused, lost].map(|n| n.load(Ordering::Relaxed));
    eprintln!("answered {answered} ({before} before the shutdown), refused {refused}, lost {lost}");
    assert!(before > 100, "the load ran ({before} answers)");
    assert_eq!(lost, 0, "requests sent and never answered");
    assert_eq!(refused, 32, "every client ended on a refused connection");
}

#[tokio::test]
async fn grpc_streams_outlive_the_body_timeout_and_idle_channels_reconnect() {
    use prism_protocol::grpc::model_infer_request::InferInputTensor;
    use prism_protocol::grpc::{GrpcInferenceServiceClient, ModelInferRequest};
    let (s, _dir) = start("idle_timeout_s = 1\nheader_read_timeout_s = 1\nbody_read_timeout_s = 1").await;
    let request = |x: f32| ModelInferRequest {
        model_name: "celsius".into(),
        id: format!("{x}"),
        inputs: vec![InferInputTensor {
            name: "INPUT0".into(),
            datatype: "FP32".into(),
            shape: vec![1, 1],
            ..Default::default()
        }],
        raw_input_contents: vec![bytes::Bytes::copy_from_slice(&x.to_le_bytes())],
        ..Default::default()
    };
    let mut g = GrpcInferenceServiceClient::connect(s.grpc_url.clone()).await.unwrap();
    // A stream that pauses longer than every timeout stays open: it is in flight.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut answers = g
        .model_stream_infer(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for x in [1.0f32, 2.0] {
        tx.send(request(x)).await.unwrap();
        let a = answers.message().await.unwrap().expect("an answer");
        assert_eq!(a.error_message, "", "{x}");
        assert_eq!(a.infer_response.unwrap().id, format!("{x}"));
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    drop(tx);
    assert!(
        answers.message().await.unwrap().is_none(),
        "the stream ends when the client's does"
    );
    // An idle channel is ended with GOAWAY after idle_timeout_s; the client's next call
    // opens a new connection and is answered.
    g.model_infer(request(3.0)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(g.model_infer(request(4.0)).await.unwrap().into_inner().id, "4");
    s.stop().await.unwrap();
}
