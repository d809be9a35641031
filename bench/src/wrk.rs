//! wrk, the load generator proxies are usually measured with, as the client
//! of `bench overhead`: an event loop in C outside this process, so a path's
//! figures are not also the cost of a client sharing the bench's threads.
//! A Lua script posts the body and prints the summary as one JSON line.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

/// What one wrk run measured.
#[derive(Debug, Deserialize)]
pub struct Summary {
    pub requests: u64,
    pub duration_us: u64,
    /// Connection errors, timeouts and answers other than 2xx/3xx.
    pub errors: u64,
    pub p50_us: u64,
    pub p99_us: u64,
}

/// Posts `body` to `url` over `connections` keep-alive connections for
/// `seconds` (wrk counts whole seconds); `dir` holds the script.
pub async fn run(
    dir: &Path,
    url: &str,
    body: &str,
    connections: usize,
    seconds: u64,
) -> anyhow::Result<Summary> {
    anyhow::ensure!(
        !body.contains("]==]"),
        "the body must fit a Lua long string"
    );
    let script = dir.join("post.lua");
    std::fs::write(
        &script,
        format!(
            r#"wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('\n{{"requests":%d,"duration_us":%d,"errors":%d,"p50_us":%d,"p99_us":%d}}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"#
        ),
    )?;
    // Two threads at most keep wrk's share of the CPUs small, and the same
    // on every path it measures.
    let threads = connections.clamp(1, 2);
    let out = tokio::process::Command::new("wrk")
        .args(["-t", &threads.to_string(), "-c", &connections.to_string()])
        .args(["-d", &format!("{seconds}s"), "--timeout", "5s", "-s"])
        .arg(&script)
        .arg(url)
        .output()
        .await
        .context("cannot run wrk (scripts/setup.sh installs it)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "wrk failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .rfind(|l| l.starts_with('{'))
        .with_context(|| format!("no summary in wrk's output: {stdout}"))?;
    let summary: Summary = serde_json::from_str(line)?;
    anyhow::ensure!(
        summary.errors == 0,
        "{url}: {} of wrk's requests failed",
        summary.errors
    );
    Ok(summary)
}

impl Summary {
    pub fn duration(&self) -> Duration {
        Duration::from_micros(self.duration_us)
    }
}
