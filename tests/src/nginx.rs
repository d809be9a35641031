//! nginx, standing in for a cloud load balancer in front of gateway replicas.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::{eventually, free_port};

pub struct Nginx {
    _child: Child,
    pub url: String,
}

/// nginx leaves a gateway out of its rotation after a failed request to it
/// for this long (whole seconds, as nginx takes it), counted on its clock of
/// whole seconds: up to a second more.
pub const FAIL_TIMEOUT: Duration = Duration::from_secs(2);

/// nginx on a port of its own, balancing over the gateways at `ports`: a
/// connect error or a 502/503 moves a request to the other. One process,
/// without a master: killing it on drop then leaves no worker behind.
pub async fn nginx(dir: &Path, ports: &[u16]) -> Nginx {
    let port = free_port();
    let servers: String = ports
        .iter()
        .map(|p| {
            let fail = FAIL_TIMEOUT.as_secs();
            format!("server 127.0.0.1:{p} max_fails=1 fail_timeout={fail}s;\n")
        })
        .collect();
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
         upstream gateways {{\n{servers} keepalive 16;\n }}\n\
         server {{\n  listen 127.0.0.1:{port};\n  location / {{\n   proxy_pass http://gateways;\n\
         proxy_http_version 1.1;\n   proxy_set_header Connection \"\";\n   proxy_buffering off;\n\
         proxy_next_upstream error timeout http_502 http_503 non_idempotent;\n   proxy_next_upstream_tries 2;\n  }}\n }}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    // Debian puts it in /usr/sbin, which a user's PATH may lack.
    let binary = if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    };
    let child = Command::new(binary)
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("nginx is installed (scripts/setup.sh)");
    let addr = format!("127.0.0.1:{port}");
    eventually(Duration::from_secs(10), "nginx listens", || async {
        tokio::net::TcpStream::connect(&addr).await.is_ok()
    })
    .await;
    Nginx {
        _child: child,
        url: format!("http://{addr}"),
    }
}
