//! TLS on both sides: clients reach the gateway over HTTPS (ALPN h2 and
//! http/1.1), and the gateway reaches an `https://` worker, trusting its CA
//! from config.

use e2e::*;
use rustls::pki_types::pem::PemObject;
use serde_json::Value;

#[tokio::test]
async fn https_listener_and_https_worker() {
    install_crypto();
    let (cert, key) = fake::self_signed();
    let dir = temp_dir();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, &cert).unwrap();
    std::fs::write(&key_path, &key).unwrap();

    let worker = fake::start(200, Some(fake::server_tls(&cert, &key))).await;
    assert!(worker.url.starts_with("https://"));
    let text = format!(
        "[listeners]\napi = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nworker_id_header = true\n\
         [listeners.tls]\ncert_path = \"{}\"\nkey_path = \"{}\"\n\
         [upstream]\nca_path = \"{}\"\n\
         [[pools]]\nname = \"sim\"\nmodels = [\"{MODEL}\"]\n[[pools.workers]]\nid = \"tls\"\nurl = \"{}\"\n",
        cert_path.display(),
        key_path.display(),
        cert_path.display(),
        worker.url
    );
    let gw = spawn_gateway_from(&text).await;
    let port = gw.api.rsplit(':').next().unwrap();
    let url = format!("https://localhost:{port}/v1/chat/completions");

    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    for (alpn, version) in [
        (b"h2".to_vec(), reqwest::Version::HTTP_2),
        (b"http/1.1".to_vec(), reqwest::Version::HTTP_11),
    ] {
        let mut tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        tls.alpn_protocols = vec![alpn];
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .build()
            .unwrap();
        let resp = client
            .post(&url)
            .json(&chat("hello", false, 2))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), version);
        assert_eq!(resp.headers()["x-worker-id"], "tls");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "from the fake");
    }

    // Plain HTTP on the TLS port is refused, not served.
    assert!(client()
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .send()
        .await
        .is_err());
}

#[tokio::test]
async fn invalid_config_stops_startup_naming_the_key() {
    let path = temp_dir().join("bad.toml");
    std::fs::write(
        &path,
        "[retry]\nmax_attempts = 0\n[[pools]]\nname = \"p\"\nmodels = [\"m\"]\n[[pools.workers]]\nid = \"w\"\nurl = \"nope\"\n",
    )
    .unwrap();
    let out = tokio::process::Command::new(bin("gateway"))
        .arg("--config")
        .arg(&path)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("retry.max_attempts"), "{stderr}");
    assert!(stderr.contains("pools[0].workers[0].url"), "{stderr}");

    std::fs::write(&path, "[listeners]\nap = \"127.0.0.1:1\"\n").unwrap();
    let out = tokio::process::Command::new(bin("gateway"))
        .arg("--config")
        .arg(&path)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ap"));
}
