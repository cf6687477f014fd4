//! The Clazar emulator (`src/bin/clazar-emulator.rs`) as the tests run it: started on a free port
//! on 127.0.0.1, driven over its control API, stopped when dropped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::TestEnv;

pub const CLIENT_ID: &str = "test-client-id";
pub const SECRET: &str = "sEcReT-client-value-4f1d9c";

/// A running emulator, stopped when dropped.
pub struct Emulator {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Emulator {
    pub fn start(env: &TestEnv, extra: &[&str]) -> Emulator {
        let dir = env.dir.path();
        let port_file = dir.join(format!("emulator-{}.port", std::process::id()));
        let _ = std::fs::remove_file(&port_file);
        let log = dir.join("accepted.jsonl");
        let child = StdCommand::new(assert_cmd::cargo::cargo_bin("clazar-emulator"))
            .env_clear()
            .args(["--client-id", CLIENT_ID, "--client-secret", SECRET])
            .arg("--port-file")
            .arg(&port_file)
            .arg("--log")
            .arg(&log)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the emulator starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.trim().parse::<u16>().ok())
            {
                break p;
            }
            assert!(Instant::now() < deadline, "the emulator did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        Emulator { child, port, log }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A small HTTP/1.1 exchange with the control API; returns the body.
    pub fn http(&self, method: &str, path: &str, body: Option<Value>) -> String {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the emulator");
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        let (head, rest) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        assert!(head.contains(" 200 ") || head.contains(" 204 "), "{head}");
        rest.to_string()
    }

    pub fn faults(&self, faults: Value) {
        self.http("POST", "/_emulator/faults", Some(faults));
    }

    pub fn config(&self, change: Value) {
        self.http("POST", "/_emulator/config", Some(change));
    }

    pub fn stats(&self) -> Value {
        let body = self.http("GET", "/_emulator/stats", None);
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    pub fn tokens(&self) -> Vec<String> {
        serde_json::from_str(&self.http("GET", "/_emulator/tokens", None)).unwrap()
    }

    /// Every record the emulator accepted, from its log.
    pub fn accepted(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Accepted (contract, dimension, quantity) triples, sorted.
    pub fn accepted_quantities(&self) -> Vec<(String, String, String)> {
        let mut v: Vec<_> = self
            .accepted()
            .iter()
            .map(|r| {
                (
                    r["contract_id"].as_str().unwrap().to_string(),
                    r["dimension"].as_str().unwrap().to_string(),
                    r["quantity"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// Each (contract, dimension, window) accepted at most once.
    pub fn assert_exactly_once(&self) {
        let mut keys: Vec<String> = self
            .accepted()
            .iter()
            .map(|r| {
                format!(
                    "{} {} {}",
                    r["contract_id"], r["dimension"], r["start_time"]
                )
            })
            .collect();
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n, "a record was accepted twice");
    }

    pub fn metering_requests(&self) -> u64 {
        self.stats()["metering_requests"].as_u64().unwrap()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
