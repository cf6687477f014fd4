//! The Clazar emulator (`src/bin/clazar-emulator.rs`) as the tests run it: started on a free port
//! on 127.0.0.1 (by [`crate::util::TestEnv::with_emulator`]), driven over its control API, stopped
//! when dropped.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{http, Running, TestCommand};

pub const CLIENT_ID: &str = "test-client-id";
pub const SECRET: &str = "sEcReT-client-value-4f1d9c";

/// A running emulator, stopped when dropped.
pub struct Emulator {
    _process: Running,
    port: u16,
}

impl Emulator {
    pub(crate) fn launch(args: &[&str]) -> Emulator {
        let dir = tempfile::tempdir().expect("a temp dir");
        let port_file = dir.path().join("port");
        let process = TestCommand::new(env!("CARGO_BIN_EXE_clazar-emulator"))
            .args(["--client-id", CLIENT_ID, "--client-secret", SECRET])
            .arg("--port-file")
            .arg(&port_file)
            .args(args)
            .spawn();
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
        Emulator {
            _process: process,
            port,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An exchange with the control API that must succeed; returns the body.
    fn control(&self, method: &str, path: &str, body: Option<Value>) -> String {
        let body = body.map(|b| b.to_string());
        let (code, answer) = http(self.port, method, path, body.as_deref())
            .unwrap_or_else(|e| panic!("{method} {path} on the emulator: {e}"));
        assert!(
            code == 200 || code == 204,
            "{method} {path}: {code} {answer}"
        );
        answer
    }

    pub fn faults(&self, faults: Value) {
        self.control("POST", "/_emulator/faults", Some(faults));
    }

    pub fn config(&self, change: Value) {
        self.control("POST", "/_emulator/config", Some(change));
    }

    pub fn stats(&self) -> Value {
        let body = self.control("GET", "/_emulator/stats", None);
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    pub fn tokens(&self) -> Vec<String> {
        serde_json::from_str(&self.control("GET", "/_emulator/tokens", None)).unwrap()
    }

    /// Every record the emulator accepted. Asked over the control API, which answers under the
    /// lock every record is accepted under: its `--log` file can be read in the middle of a line
    /// while a request is being answered.
    pub fn accepted(&self) -> Vec<Value> {
        let body = self.control("GET", "/_emulator/accepted", None);
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
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

    /// The (contract, month) pairs of every accepted record, sorted, each once.
    pub fn contract_months(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self
            .accepted()
            .iter()
            .map(|r| {
                (
                    r["contract_id"].as_str().unwrap().to_string(),
                    r["start_time"].as_str().unwrap()[..7].to_string(),
                )
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }
}
