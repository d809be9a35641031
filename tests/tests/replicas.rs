//! Gateway replicas behind a load balancer: nginx (standing in for a cloud
//! one) in front of two gateways. Draining one with SIGTERM loses nothing;
//! killing one with SIGKILL loses at most the requests it was carrying, and
//! new requests go to the other.

use std::time::Duration;

use e2e::*;

async fn gateway_on(port: u16, workers: &[&WorkerProc]) -> GatewayProc {
    let listeners = format!(
        "[listeners]\napi = \"127.0.0.1:{port}\"\nadmin = \"127.0.0.1:0\"\nworker_id_header = true\ndrain_grace_ms = 10000\n"
    );
    spawn_gateway("a", workers, &listeners).await
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_behind_nginx_drain_and_die_without_losing_others() {
    let slow = WorkerOpts {
        decode_step_us: 5_000,
        ..WorkerOpts::default()
    };
    let w1 = spawn_worker("w1", "a", slow.clone()).await;
    let w2 = spawn_worker("w2", "a", slow).await;
    let (pa, pb) = (free_port(), free_port());
    let a = gateway_on(pa, &[&w1, &w2]).await;
    let mut b = gateway_on(pb, &[&w1, &w2]).await;
    let dir = temp_dir();
    let lb = nginx(&dir, &[pa, pb]).await;
    served_by(&lb.url, &chat("through nginx", false, 2)).await;

    // SIGTERM: the draining gateway finishes what it has, nginx sends the rest on.
    let load = Load::start(&lb.url, 6);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut drained = a;
    drained.proc.sigterm();
    let status = drained.proc.wait().await;
    assert!(status.success(), "drained and exited 0: {status:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, failures) = load.stop().await;
    assert!(
        ok > 0 && failures.is_empty(),
        "drain: {ok} ok, failed: {failures:?}"
    );

    // Back (and past nginx's fail_timeout, so it is tried again), then the
    // other one killed: at most its own requests are lost.
    let _a = gateway_on(pa, &[&w1, &w2]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let load = Load::start(&lb.url, 6);
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.proc.sigkill().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (ok, failures) = load.stop().await;
    assert!(ok > 0, "{failures:?}");
    assert!(
        failures.len() <= 6,
        "at most the 6 clients' requests in flight on it: {failures:?}"
    );
    for i in 0..6 {
        served_by(&lb.url, &chat(&format!("after {i}"), false, 2)).await;
    }
}
