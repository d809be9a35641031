//! The API listener under hostile or heavy connection use: clients that
//! trickle their request head are cut at `header_read_timeout_ms` while
//! others are served, and a connection over `max_connections` is answered
//! 503 at once instead of being held.

use std::time::{Duration, Instant};

use e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn addr(gw: &GatewayProc) -> String {
    gw.api.trim_start_matches("http://").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_header_clients_are_cut_while_others_are_served() {
    let w1 = spawn_worker("w1", "a", WorkerOpts::default()).await;
    let gw = spawn_gateway("a", &[&w1], "[listeners]\napi = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nworker_id_header = true\nheader_read_timeout_ms = 1000\n").await;
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut tcp = TcpStream::connect(addr(&gw)).await.unwrap();
        tcp.write_all(b"POST /v1/chat/completions HTTP/1.1\r\n")
            .await
            .unwrap();
        slow.push(tokio::spawn(async move {
            // One header line every 200 ms, never the blank line that ends the head.
            let mut buf = [0u8; 256];
            for i in 0.. {
                if tcp
                    .write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
                    .await
                    .is_err()
                {
                    return started.elapsed();
                }
                match tokio::time::timeout(Duration::from_millis(200), tcp.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
                    _ => {}
                }
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "a slow client was never cut"
                );
            }
            unreachable!()
        }));
    }
    // Meanwhile everyone else is served.
    for i in 0..5 {
        served_by(&gw.api, &chat(&format!("normal {i}"), false, 2)).await;
    }
    for cut in slow {
        let at = cut.await.unwrap();
        assert!(
            at >= Duration::from_millis(900) && at < Duration::from_secs(4),
            "cut after {at:?}, with a 1 s timeout"
        );
    }
    served_by(&gw.api, &chat("after", false, 2)).await;
    let metrics = metrics_text(&gw).await;
    assert!(
        metrics.contains("llmgw_connections_refused_total{reason=\"header_timeout\"} 50"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_over_the_cap_is_answered_503() {
    let w1 = spawn_worker("w1", "a", WorkerOpts::default()).await;
    let gw = spawn_gateway(
        "a",
        &[&w1],
        "[listeners]\napi = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nworker_id_header = true\nmax_connections = 4\n",
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(addr(&gw)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut over = TcpStream::connect(addr(&gw)).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), over.read_to_string(&mut answer))
        .await
        .expect("answered at once")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("\"type\":\"server_error\"")
            || answer.contains("too many open connections"),
        "{answer}"
    );
    // Freed slots serve again.
    drop(held);
    eventually(Duration::from_secs(5), "served again", || async {
        client()
            .post(format!("{}/v1/chat/completions", gw.api))
            .json(&chat("x", false, 2))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}

/// An h2c client learns the stream and header limits from the gateway's
/// first SETTINGS frame, and an HTTP/1 head with too many header lines is
/// refused with 431 while the connection's peers are served.
#[tokio::test(flavor = "multi_thread")]
async fn http2_and_http1_limits_are_announced_and_enforced() {
    let w1 = spawn_worker("w1", "a", WorkerOpts::default()).await;
    let gw = spawn_gateway("a", &[&w1], "").await;

    let mut tcp = TcpStream::connect(addr(&gw)).await.unwrap();
    // The client preface, then an empty SETTINGS frame.
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut head = [0u8; 9];
    tcp.read_exact(&mut head).await.unwrap();
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    assert_eq!(
        (head[3], head[4]),
        (0x4, 0x0),
        "the server's SETTINGS first"
    );
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).await.unwrap();
    let settings: Vec<(u16, u32)> = payload
        .chunks_exact(6)
        .map(|s| {
            (
                u16::from_be_bytes([s[0], s[1]]),
                u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
            )
        })
        .collect();
    // SETTINGS_MAX_CONCURRENT_STREAMS and SETTINGS_MAX_HEADER_LIST_SIZE.
    assert!(settings.contains(&(0x3, 256)), "{settings:?}");
    assert!(settings.contains(&(0x6, 64 * 1024)), "{settings:?}");

    let mut tcp = TcpStream::connect(addr(&gw)).await.unwrap();
    let mut request = String::from("GET /v1/models HTTP/1.1\r\nhost: x\r\n");
    for i in 0..150 {
        request.push_str(&format!("x-extra-{i}: 1\r\n"));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    served_by(&gw.api, &chat("still served", false, 2)).await;
}
