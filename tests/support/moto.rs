//! A real `moto_server` (PyPI `moto[server]`) on a free loopback port: the AWS APIs
//! (Redshift, Glue, S3) for tests and benchmarks. Its request log (one line per HTTP
//! request, as werkzeug writes it) is kept, so tests can count what reached it.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Moto {
    child: Child,
    pub port: u16,
    log: PathBuf,
}

impl Moto {
    pub fn start() -> Result<Moto, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let log = std::env::temp_dir().join(format!("sluice-moto-{port}.log"));
        let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("moto_server does not start ({e}): run tests/setup.sh"))?;
        let moto = Moto { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("moto_server did not listen within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(moto)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A Redshift API client for moto (fixed test credentials).
    pub fn redshift(&self) -> aws_sdk_redshift::Client {
        let http = http_client();
        let config = aws_sdk_redshift::config::Builder::new()
            .behavior_version(aws_sdk_redshift::config::BehaviorVersion::latest())
            .http_client(http)
            .region(aws_sdk_redshift::config::Region::new("us-east-1"))
            .endpoint_url(self.endpoint())
            .credentials_provider(aws_sdk_redshift::config::Credentials::new(
                "testing", "testing", None, None, "moto",
            ))
            .build();
        aws_sdk_redshift::Client::from_conf(config)
    }
}

impl Moto {
    /// The request lines moto logged so far (`"GET /bucket/key HTTP/1.1" 200`).
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" HTTP/1."))
            .map(str::to_owned)
            .collect()
    }

    /// A Glue API client for moto.
    pub fn glue(&self) -> aws_sdk_glue::Client {
        let http = http_client();
        let config = aws_sdk_glue::config::Builder::new()
            .behavior_version(aws_sdk_glue::config::BehaviorVersion::latest())
            .http_client(http)
            .region(aws_sdk_glue::config::Region::new("us-east-1"))
            .endpoint_url(self.endpoint())
            .credentials_provider(aws_sdk_glue::config::Credentials::new(
                "testing", "testing", None, None, "moto",
            ))
            .build();
        aws_sdk_glue::Client::from_conf(config)
    }

    /// Creates a bucket (moto accepts the unsigned request) and returns an
    /// `object_store` client for it, for uploading test data.
    pub fn bucket(&self, name: &str) -> Result<Arc<dyn object_store::ObjectStore>, String> {
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        write!(
            stream,
            "PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .map_err(|e| e.to_string())?;
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        if !response.starts_with("HTTP/1.1 200") {
            return Err(format!("moto did not create bucket {name}: {response}"));
        }
        self.store(name)
    }

    /// An `object_store` client for an existing bucket.
    pub fn store(&self, name: &str) -> Result<Arc<dyn object_store::ObjectStore>, String> {
        let store = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(name)
            .with_region("us-east-1")
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(store))
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The AWS SDK's HTTP client with rustls + ring, as Sluice builds it.
fn http_client() -> aws_sdk_glue::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}
