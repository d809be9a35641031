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
    let gw = spawn_gateway("a", &[&w1], "[listeners]\napi = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nheader_read_timeout_ms = 1000\n").await;
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
        "[listeners]\napi = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nmax_connections = 4\n",
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
