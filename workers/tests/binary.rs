//! The `worker` binary: prints its address, serves, drains on SIGTERM, and
//! refuses a bad config before binding.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

fn worker() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_worker"));
    command.env("RUST_LOG", "warn");
    command
}

#[test]
fn serves_and_exits_cleanly_on_sigterm() {
    let mut child = worker()
        .args(["--listen", "127.0.0.1:0", "--id", "bin-1", "--zone", "z9"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .expect("first line names the address");
    let addr = url.strip_prefix("http://").unwrap();

    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: w\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains(r#""worker_id":"bin-1""#), "{response}");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_bad_config_is_refused_with_every_problem() {
    let path = std::env::temp_dir().join(format!("worker-bad-{}.toml", std::process::id()));
    std::fs::write(&path, "id = \"\"\n[engine]\nblock_size = 0\n").unwrap();
    let output = worker()
        .arg("--config")
        .arg(&path)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "nothing was bound");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("id: must not be empty")
            && stderr.contains("engine.block_size: must be > 0"),
        "{stderr}"
    );
}
