//! Routing under failure: failover when a worker dies, zone preference and
//! spill, active and passive ejection with recovery, client disconnects, and
//! a SIGTERM drain that loses no request.

use std::time::Duration;

use e2e::*;
use futures_util::StreamExt;
use serde_json::Value;

#[tokio::test]
async fn failover_when_a_worker_dies() {
    let mut w1 = spawn_worker("w1", "a", WorkerOpts::default()).await;
    let w2 = spawn_worker("w2", "a", WorkerOpts::default()).await;
    // Slow probes: failover, not the prober, must hide the dead worker.
    let extra = "[health]\ninterval_ms = 60000\n[breaker]\nbase_ejection_ms = 60000\nmax_ejection_ms = 60000\n\
                 [routing]\nstrategy = \"least_load\"\n";
    let gw = spawn_gateway("a", &[&w1, &w2], extra).await;
    let mut seen = std::collections::HashSet::new();
    for i in 0..20 {
        seen.insert(served_by(&gw.api, &chat(&format!("warm {i}"), false, 2)).await);
    }
    assert_eq!(
        seen.len(),
        2,
        "power of two choices spreads over both workers"
    );

    w1.proc.sigkill().await;
    for i in 0..40 {
        let worker = served_by(&gw.api, &chat(&format!("after {i}"), false, 2)).await;
        assert_eq!(worker, "w2");
    }
    let metrics = metrics_text(&gw).await;
    assert!(metrics.contains("llmgw_failovers_total{"), "{metrics}");
    assert!(
        metrics.contains("llmgw_worker_ejections_total{"),
        "{metrics}"
    );
    assert_eq!(worker_status(&gw, "w1").await["breaker"], "open");
}

#[tokio::test]
async fn prefers_own_zone_and_spills_when_saturated() {
    let slow = WorkerOpts {
        decode_step_us: 5000,
        ..WorkerOpts::default()
    };
    let wa = spawn_worker("wa", "a", slow).await;
    let wb = spawn_worker("wb", "b", WorkerOpts::default()).await;
    let gw = spawn_gateway("a", &[&wa, &wb], "[routing]\nspill_in_flight = 1\n").await;
    let c = client();
    for i in 0..8 {
        assert_eq!(
            served_by(&gw.api, &chat(&format!("q{i}"), false, 2)).await,
            "wa"
        );
    }
    // Hold a long stream on the local worker: it is now saturated.
    let resp = c
        .post(format!("{}/v1/chat/completions", gw.api))
        .json(&chat("long", true, 2000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-worker-id"], "wa");
    let mut stream = resp.bytes_stream();
    stream.next().await.unwrap().unwrap();
    assert_eq!(served_by(&gw.api, &chat("spill", false, 2)).await, "wb");
    drop(stream);
    // Once the stream is gone, traffic comes home.
    eventually(
        Duration::from_secs(10),
        "local worker idle again",
        || async { worker_status(&gw, "wa").await["in_flight"] == 0 },
    )
    .await;
    assert_eq!(served_by(&gw.api, &chat("home", false, 2)).await, "wa");
}

#[tokio::test]
async fn unhealthy_worker_is_ejected_and_recovers() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let opts = WorkerOpts {
        listen: ([127, 0, 0, 1], port).into(),
        ..WorkerOpts::default()
    };
    let mut w1 = spawn_worker("w1", "a", opts.clone()).await;
    let w2 = spawn_worker("w2", "b", WorkerOpts::default()).await;
    let gw = spawn_gateway("a", &[&w1, &w2], "").await;
    let c = client();
    assert_eq!(served_by(&gw.api, &chat("hi", false, 2)).await, "w1");

    w1.proc.sigkill().await;
    eventually(
        Duration::from_secs(10),
        "probes mark w1 unhealthy",
        || async { worker_status(&gw, "w1").await["health"] == "unhealthy" },
    )
    .await;
    let ready = c.get(format!("{}/ready", gw.admin)).send().await.unwrap();
    assert_eq!(
        ready.status(),
        200,
        "one healthy worker keeps the gateway ready"
    );
    assert_eq!(
        served_by(&gw.api, &chat("while down", false, 2)).await,
        "w2"
    );

    let _w1 = spawn_worker("w1", "a", opts).await;
    eventually(Duration::from_secs(10), "w1 healthy again", || async {
        worker_status(&gw, "w1").await["health"] == "healthy"
    })
    .await;
    assert_eq!(served_by(&gw.api, &chat("back", false, 2)).await, "w1");
}

#[tokio::test]
async fn no_routable_worker_means_not_ready_and_503() {
    let mut w1 = spawn_worker("w1", "a", WorkerOpts::default()).await;
    let gw = spawn_gateway("a", &[&w1], "").await;
    let c = client();
    w1.proc.sigkill().await;
    eventually(Duration::from_secs(10), "not ready", || async {
        c.get(format!("{}/ready", gw.admin))
            .send()
            .await
            .unwrap()
            .status()
            == 503
    })
    .await;
    let resp = c
        .post(format!("{}/v1/chat/completions", gw.api))
        .json(&chat("x", false, 2))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "no_healthy_worker");
}

#[tokio::test]
async fn server_errors_eject_passively_and_fail_over() {
    let broken = fake::start(500, None).await;
    let w2 = spawn_worker("w2", "b", WorkerOpts::default()).await;
    let text = format!(
        "zone = \"a\"\n[listeners]\napi = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nworker_id_header = true\n\
         [breaker]\nfailure_threshold = 2\nbase_ejection_ms = 60000\nmax_ejection_ms = 60000\n\
         [[pools]]\nname = \"sim\"\nmodels = [\"{MODEL}\"]\n\
         [[pools.workers]]\nid = \"broken\"\nurl = \"{}\"\nzone = \"a\"\n\
         [[pools.workers]]\nid = \"w2\"\nurl = \"{}\"\nzone = \"b\"\n",
        broken.url, w2.url
    );
    let gw = spawn_gateway_from(&text).await;
    for i in 0..10 {
        assert_eq!(
            served_by(&gw.api, &chat(&format!("{i}"), false, 2)).await,
            "w2"
        );
    }
    assert_eq!(
        broken.hits.load(std::sync::atomic::Ordering::Relaxed),
        2,
        "ejected after two 5xx"
    );
    assert_eq!(worker_status(&gw, "broken").await["breaker"], "open");
}

#[tokio::test]
async fn client_errors_from_a_worker_pass_through_and_never_eject() {
    let picky = fake::start(400, None).await;
    let text = format!(
        "[listeners]\napi = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nworker_id_header = true\n[breaker]\nfailure_threshold = 1\n\
         [[pools]]\nname = \"sim\"\nmodels = [\"{MODEL}\"]\n[[pools.workers]]\nid = \"picky\"\nurl = \"{}\"\n",
        picky.url
    );
    let gw = spawn_gateway_from(&text).await;
    let c = client();
    for _ in 0..5 {
        let resp = c
            .post(format!("{}/v1/chat/completions", gw.api))
            .json(&chat("x", false, 2))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
    }
    assert_eq!(
        picky.hits.load(std::sync::atomic::Ordering::Relaxed),
        5,
        "a 4xx is never retried"
    );
    assert_eq!(worker_status(&gw, "picky").await["breaker"], "closed");
}

#[tokio::test]
async fn client_disconnect_cancels_the_worker_request() {
    let slow = WorkerOpts {
        decode_step_us: 5000,
        ..WorkerOpts::default()
    };
    let w1 = spawn_worker("w1", "a", slow).await;
    let gw = spawn_gateway("a", &[&w1], "").await;
    let c = client();
    let resp = c
        .post(format!("{}/v1/chat/completions", gw.api))
        .json(&chat("go on", true, 3000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    stream.next().await.unwrap().unwrap();
    let running = || async {
        let v: Value = c
            .get(format!("{}/health", w1.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["load"]["running"].as_u64().unwrap()
    };
    assert_eq!(running().await, 1);
    drop(stream);
    eventually(
        Duration::from_secs(10),
        "worker frees the sequence",
        || async { running().await == 0 },
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "gateway in-flight back to 0",
        || async { worker_status(&gw, "w1").await["in_flight"] == 0 },
    )
    .await;
}

#[tokio::test]
async fn sigterm_drains_without_losing_a_request() {
    let slow = WorkerOpts {
        decode_step_us: 4000,
        ..WorkerOpts::default()
    };
    let w1 = spawn_worker("w1", "a", slow).await;
    let mut gw = spawn_gateway("a", &[&w1], "").await;
    let c = client();
    let mut streams = Vec::new();
    for i in 0..4 {
        let resp = c
            .post(format!("{}/v1/chat/completions", gw.api))
            .json(&chat(&format!("stream {i}"), true, 500))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        streams.push(tokio::spawn(async move { resp.text().await.unwrap() }));
    }
    gw.proc.sigterm();
    eventually(Duration::from_secs(5), "/ready turns 503", || async {
        c.get(format!("{}/ready", gw.admin))
            .send()
            .await
            .is_ok_and(|r| r.status() == 503)
    })
    .await;
    // New connections are refused while the old ones finish.
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    assert!(fresh
        .post(format!("{}/v1/chat/completions", gw.api))
        .json(&chat("late", false, 2))
        .send()
        .await
        .is_err());
    for stream in streams {
        let (events, done) = sse_events(&stream.await.unwrap());
        assert!(done, "in-flight stream finished");
        assert!(events.len() >= 500, "all 500 tokens arrived");
    }
    let status = tokio::time::timeout(Duration::from_secs(15), gw.proc.wait())
        .await
        .expect("gateway exits");
    assert!(status.success(), "drain exits 0: {status:?}");
}

#[tokio::test]
async fn a_worker_whose_engine_hangs_is_caught_by_canary_generations() {
    // `/health` answers while no completion ever does.
    let hung = fake::start(0, None).await;
    let w2 = spawn_worker("w2", "b", WorkerOpts::default()).await;
    let text = format!(
        "zone = \"a\"\n[listeners]\napi = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nworker_id_header = true\n\
         [health]\ninterval_ms = 100\ntimeout_ms = 500\nunhealthy_threshold = 1\nhealthy_threshold = 1\n\
         canary_interval_ms = 300\ncanary_timeout_ms = 300\n\
         [[pools]]\nname = \"sim\"\nmodels = [\"{MODEL}\"]\n\
         [[pools.workers]]\nid = \"hung\"\nurl = \"{}\"\nzone = \"a\"\n\
         [[pools.workers]]\nid = \"w2\"\nurl = \"{}\"\nzone = \"b\"\n",
        hung.url, w2.url
    );
    let gw = spawn_gateway_from(&text).await;
    // Within two intervals of the first canary (plus its timeout).
    eventually(
        Duration::from_secs(3),
        "the hung worker is unhealthy",
        || async { worker_status(&gw, "hung").await["health"] == "unhealthy" },
    )
    .await;
    let hung_status = worker_status(&gw, "hung").await;
    let problem = hung_status["problem"].as_str().unwrap_or_default();
    assert!(
        problem.contains("canary generation failed"),
        "{hung_status}"
    );
    // w2 answers its canaries, and traffic goes there only.
    assert_eq!(worker_status(&gw, "w2").await["health"], "healthy");
    for i in 0..4 {
        assert_eq!(
            served_by(&gw.api, &chat(&format!("{i}"), false, 2)).await,
            "w2"
        );
    }
    let metrics = metrics_text(&gw).await;
    assert!(
        metrics.contains("llmgw_canary_generations_total{pool=\"sim\",outcome=\"failed\"}"),
        "{metrics}"
    );
}

/// A worker that falls silent mid-stream costs its client
/// `retry.stream_stall_ms`, not forever: the stream ends with an OpenAI
/// error event and `[DONE]`, and the stall is counted.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_whose_worker_falls_silent_ends_with_an_error_event() {
    let stalling = fake::start_stalling().await;
    let gw = spawn_gateway_from(&format!(
        "[listeners]\napi = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nworker_id_header = true\n[retry]\nstream_stall_ms = 500\n\
         [[pools]]\nname = \"{POOL}\"\nmodels = [\"{MODEL}\"]\nengine = \"openai\"\n\
         [[pools.workers]]\nid = \"hung\"\nurl = \"{}\"\n",
        stalling.url
    ))
    .await;
    let started = std::time::Instant::now();
    let resp = client()
        .post(format!("{}/v1/chat/completions", gw.api))
        .json(&chat("tell me", true, 50))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(10), resp.text())
        .await
        .expect("the stream ends")
        .unwrap();
    let took = started.elapsed();
    let (events, done) = sse_events(&body);
    assert!(done, "{body}");
    assert_eq!(events[0]["choices"][0]["delta"]["content"], "so far");
    let error = &events.last().unwrap()["error"];
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("sent nothing for 500 ms"),
        "{body}"
    );
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let metrics = metrics_text(&gw).await;
    assert!(
        metrics.contains("llmgw_response_stalls_total{pool=\"sim\"} 1"),
        "{metrics}"
    );
}

/// Logs written to a file carry no colour codes, and a worker that cannot
/// reach etcd says so once, not at every retry.
#[tokio::test(flavor = "multi_thread")]
async fn logs_are_plain_text_and_a_lost_lease_is_said_once() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let mut worker = tokio::process::Command::new(bin("worker"))
        .args([
            "--id",
            "w1",
            "--pool",
            POOL,
            "--listen",
            "127.0.0.1:0",
            "--etcd",
            &dead,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    worker.kill().await.unwrap();
    let out = worker.wait_with_output().await.unwrap();
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(!logs.contains('\x1b'), "colour codes in a log file: {logs}");
    assert_eq!(logs.matches("etcd lease lost").count(), 1, "{logs}");
}
