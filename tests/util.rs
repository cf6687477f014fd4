//! The test harness. [`TestEnv`] is one test's world: a temporary folder and ledger, a cleaned
//! environment (so that a developer's own variables cannot leak in), and, when the test asks for
//! them, a bucket on the test S3 server, the Clazar emulator and variables of its own, which the
//! other hosts it makes share. [`TestCommand`] runs a program there; every run names the exit code
//! it expects and panics with the command line, exit code, stdout and stderr when it differs.
//! Helpers write export trees and read the ledger directly (with rusqlite, not through meterbook).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::types::FromSql;
use rusqlite::{Connection, Row};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::emulator::{Emulator, CLIENT_ID, SECRET};
use crate::s3::{self, Bucket};

/// One test's world; see the module documentation.
pub struct TestEnv {
    pub dir: TempDir,
    pub ledger: PathBuf,
    bucket: Option<Arc<Bucket>>,
    emulator: Option<Arc<Emulator>>,
    vars: Vec<(String, String)>,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        let dir = tempfile::tempdir().expect("a temp dir");
        let ledger = dir.path().join("ledger.sqlite");
        TestEnv {
            dir,
            ledger,
            bucket: None,
            emulator: None,
            vars: Vec::new(),
        }
    }

    /// With a fresh bucket of its own on the test S3 server (see [`TestEnv::bucket`]); every
    /// command is pointed at that server.
    pub fn with_bucket(mut self, label: &str) -> TestEnv {
        self.bucket = Some(Arc::new(Bucket::new(label)));
        self
    }

    /// With the Clazar emulator started with `args` (see [`TestEnv::emulator`]); every command
    /// gets its URL and the credentials it accepts.
    pub fn with_emulator(mut self, args: &[&str]) -> TestEnv {
        self.emulator = Some(Arc::new(Emulator::launch(args)));
        self
    }

    /// With `vars` set for every command.
    pub fn with_vars<K: Into<String>, V: Into<String>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> TestEnv {
        self.vars
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Another host of the same deployment: a folder and ledger of its own, and the same bucket,
    /// emulator and variables.
    pub fn another_host(&self) -> TestEnv {
        let mut other = TestEnv::new();
        other.bucket = self.bucket.clone();
        other.emulator = self.emulator.clone();
        other.vars = self.vars.clone();
        other
    }

    pub fn bucket(&self) -> &Bucket {
        self.bucket.as_deref().expect("a TestEnv made with_bucket")
    }

    pub fn emulator(&self) -> &Emulator {
        self.emulator
            .as_deref()
            .expect("a TestEnv made with_emulator")
    }

    /// `meterbook args` in the test's folder, with only PATH, a HOME of its own, the ledger,
    /// `METERBOOK_LOG=info`, dummy AWS credentials, and what the test asked for (the S3 server,
    /// the emulator, its variables) in the environment.
    pub fn meterbook<I, S>(&self, args: I) -> TestCommand
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = TestCommand::new(env!("CARGO_BIN_EXE_meterbook"))
            .current_dir(self.dir.path())
            .env("HOME", self.dir.path())
            .env("METERBOOK_LEDGER", &self.ledger)
            .env("METERBOOK_LOG", "info")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true");
        if self.bucket.is_some() {
            cmd = cmd.s3_endpoint(&s3::endpoint());
        }
        if let Some(emulator) = &self.emulator {
            cmd = cmd
                .env("CLAZAR_CLIENT_ID", CLIENT_ID)
                .env("CLAZAR_CLIENT_SECRET", SECRET)
                .env("METERBOOK_CLAZAR_BASE_URL", emulator.url());
        }
        for (name, value) in &self.vars {
            cmd = cmd.env(name, value);
        }
        cmd.args(args)
    }

    /// `meterbook ingest --source <the export tree>`.
    pub fn ingest(&self) -> TestCommand {
        self.meterbook(["ingest", "--source"]).arg(self.export())
    }

    /// `name` in the test's folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The export tree root used by [`TestEnv::write_usage`] and [`TestEnv::generate`].
    pub fn export(&self) -> PathBuf {
        self.path("export")
    }

    /// Writes one file under the export tree.
    pub fn write_usage(&self, key: &str, body: &[u8]) -> PathBuf {
        let path = self.export().join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, body).unwrap();
        path
    }

    /// Writes `records` as the usage file `key`.
    pub fn write_records(&self, key: &str, records: &[Value]) {
        self.write_usage(key, Value::Array(records.to_vec()).to_string().as_bytes());
    }

    /// Writes the usage file of `subscription` in `hour` (YYYY/MM/DD/HH) of plan pt-1: one record
    /// of `contract` per (dimension, value).
    pub fn write_hour(
        &self,
        hour: &str,
        subscription: &str,
        contract: &str,
        values: &[(&str, Value)],
    ) {
        let records: Vec<Value> = values
            .iter()
            .map(|(dimension, value)| record(Some(contract), dimension, value.clone()))
            .collect();
        self.write_records(&usage_key("pt-1", hour, subscription), &records);
    }

    /// Writes the completion marker: pg:PROD:pt-1 exported up to `to`.
    pub fn write_marker(&self, to: &str) {
        let marker =
            serde_json::json!({ SERVICE_KEY: {"last_processed_to": to, "last_updated_at": to} });
        self.write_usage(MARKER_KEY, marker.to_string().as_bytes());
    }

    /// Runs `scripts/gen-export.py` into the export tree.
    pub fn generate(&self, args: &[&str]) {
        python_script("scripts/gen-export.py")
            .arg("--out")
            .arg(self.export())
            .args(args)
            .expect_code(0);
    }

    /// The ledger, opened directly.
    pub fn db(&self) -> Connection {
        Connection::open(&self.ledger).expect("the ledger opens")
    }

    /// The one value a query on the ledger returns.
    pub fn one<T: FromSql>(&self, sql: &str) -> T {
        self.db()
            .query_row(sql, [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// One integer from a query on the ledger.
    pub fn count(&self, sql: &str) -> i64 {
        self.one(sql)
    }

    /// Every row a query on the ledger returns, each read by `row`.
    pub fn rows<T>(&self, sql: &str, row: impl FnMut(&Row) -> rusqlite::Result<T>) -> Vec<T> {
        let db = self.db();
        let mut stmt = db.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        let rows = stmt
            .query_map([], row)
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<T>>>())
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows
    }

    /// The first column of every row a query on the ledger returns.
    pub fn column<T: FromSql>(&self, sql: &str) -> Vec<T> {
        self.rows(sql, |r| r.get(0))
    }

    /// (key, record_index, reason) of every row of `usage_problems`, in that order.
    pub fn usage_problems(&self) -> Vec<(String, Option<i64>, String)> {
        self.rows(
            "SELECT key, record_index, reason FROM usage_problems ORDER BY key, record_index",
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
    }
}

/// Every test's ledger ends with the monthly totals ingest keeps (`usage_month_totals`) equal to
/// their definition, whatever the test did: ingests, rewrites, compaction, pulls, restores.
impl Drop for TestEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let Ok(conn) = Connection::open_with_flags(
            &self.ledger,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        ) else {
            return;
        };
        let _ = conn.busy_timeout(Duration::from_secs(30));
        let kept: rusqlite::Result<bool> = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'usage_month_totals')",
            [],
            |r| r.get(0),
        );
        if !matches!(kept, Ok(true)) {
            return; // not a ledger, or one from before the totals
        }
        let differences = rows_as_text(&conn, meterbook::ledger::MONTH_TOTALS_DIFFERENCES)
            .unwrap_or_else(|e| {
                panic!(
                    "checking the monthly totals of {}: {e}",
                    self.ledger.display()
                )
            });
        assert!(
            differences.is_empty(),
            "the monthly totals of {} differ from their definition: {differences:#?}",
            self.ledger.display()
        );
    }
}

/// Every row of `sql`, every value as text (NULL as "").
pub fn rows_as_text(conn: &Connection, sql: &str) -> rusqlite::Result<Vec<Vec<String>>> {
    let mut stmt = conn.prepare(sql)?;
    let n = stmt.column_count();
    let rows = stmt.query_map([], |r| {
        (0..n)
            .map(|i| {
                Ok(match r.get_ref(i)? {
                    rusqlite::types::ValueRef::Null => String::new(),
                    rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                    rusqlite::types::ValueRef::Real(v) => v.to_string(),
                    rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                    rusqlite::types::ValueRef::Blob(_) => "<blob>".into(),
                })
            })
            .collect()
    })?;
    rows.collect()
}

/// The service key of the usage the tests write by hand.
pub const SERVICE_KEY: &str = "pg:PROD:pt-1";

/// The key of the completion marker in the export layout.
pub const MARKER_KEY: &str = "omnistrate-metering/last_success_export.json";

/// How long a command may run before it is killed and its test fails.
const DEADLINE: Duration = Duration::from_secs(300);

/// A program to run with a cleaned environment (only PATH, and what is added); see the module
/// documentation.
pub struct TestCommand {
    cmd: Command,
    stdin: Option<Vec<u8>>,
    deadline: Duration,
}

impl TestCommand {
    pub fn new(program: impl AsRef<OsStr>) -> TestCommand {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        TestCommand {
            cmd,
            stdin: None,
            deadline: DEADLINE,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> TestCommand {
        self.cmd.arg(arg);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> TestCommand
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn env(mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> TestCommand {
        self.cmd.env(name, value);
        self
    }

    pub fn envs<I, K, V>(mut self, vars: I) -> TestCommand
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        self.cmd.envs(vars);
        self
    }

    pub fn env_remove(mut self, name: impl AsRef<OsStr>) -> TestCommand {
        self.cmd.env_remove(name);
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> TestCommand {
        self.cmd.current_dir(dir);
        self
    }

    /// Points meterbook at the S3-compatible server at `url`, with path-style addressing.
    pub fn s3_endpoint(self, url: &str) -> TestCommand {
        self.env("METERBOOK_S3_ENDPOINT_URL", url)
            .env("METERBOOK_S3_PATH_STYLE", "true")
    }

    /// Gives the program `input` on its standard input.
    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> TestCommand {
        self.stdin = Some(input.into());
        self
    }

    /// Lets the program run for `limit` (instead of five minutes) before it is killed and the
    /// test fails.
    pub fn timeout(mut self, limit: Duration) -> TestCommand {
        self.deadline = limit;
        self
    }

    /// The same command run through `program args` (such as `setpriv ...`), with the same
    /// environment and folder.
    pub fn via<I, S>(self, program: &str, args: I) -> TestCommand
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .args(args)
            .arg(self.cmd.get_program())
            .args(self.cmd.get_args());
        for (name, value) in self.cmd.get_envs() {
            if let Some(value) = value {
                cmd.env(name, value);
            }
        }
        if let Some(dir) = self.cmd.get_current_dir() {
            cmd.current_dir(dir);
        }
        TestCommand { cmd, ..self }
    }

    /// Starts the program; its output goes to files read when it ends.
    pub fn spawn(mut self) -> Running {
        let line = command_line(&self.cmd);
        let stdout = tempfile::tempfile().unwrap();
        let stderr = tempfile::tempfile().unwrap();
        let stdin = match self.stdin.take() {
            Some(input) => {
                let mut file = tempfile::tempfile().unwrap();
                file.write_all(&input).unwrap();
                file.rewind().unwrap();
                Stdio::from(file)
            }
            None => Stdio::null(),
        };
        let child = self
            .cmd
            .stdin(stdin)
            .stdout(stdout.try_clone().unwrap())
            .stderr(stderr.try_clone().unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{line}: {e}"));
        Running {
            child,
            line,
            stdout,
            stderr,
            deadline: Instant::now() + self.deadline,
        }
    }

    /// Runs the program; panics unless it exits with `code`.
    #[track_caller]
    pub fn expect_code(self, code: i32) -> Output {
        self.spawn().expect_code(code)
    }

    /// Runs the program; panics unless a signal ends it.
    #[track_caller]
    pub fn expect_killed(self) -> Output {
        self.spawn().expect_killed()
    }

    /// Runs the program; panics unless it exits with one of `codes`.
    #[track_caller]
    pub fn expect_one_of(self, codes: &[i32]) -> Output {
        self.spawn().expect_one_of(codes)
    }

    /// Whether the program can be run here and exits with 0: for probing the machine only.
    pub fn succeeds(self) -> bool {
        let mut cmd = self.cmd;
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

/// A started program, killed when dropped if it still runs.
pub struct Running {
    child: Child,
    line: String,
    stdout: File,
    stderr: File,
    deadline: Instant,
}

impl Running {
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// What the program has written to stdout so far.
    pub fn stdout_so_far(&self) -> String {
        text(&self.stdout)
    }

    /// Sends SIGTERM; the program then has `limit` to end.
    pub fn sigterm(mut self, limit: Duration) -> Running {
        // SAFETY: kill(2) on our own child's process id.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.deadline = Instant::now() + limit;
        self
    }

    /// Ends the program with SIGKILL.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits for the program; panics unless it exits with `code`.
    #[track_caller]
    pub fn expect_code(self, code: i32) -> Output {
        self.expect_one_of(&[code])
    }

    /// Waits for the program; panics unless it exits with one of `codes`.
    #[track_caller]
    pub fn expect_one_of(mut self, codes: &[i32]) -> Output {
        let out = self.wait();
        if !out.code.is_some_and(|c| codes.contains(&c)) {
            let expected: Vec<String> = codes.iter().map(i32::to_string).collect();
            panic!(
                "expected exit code {}, got {}\n{}",
                expected.join(" or "),
                shown_code(out.code),
                self.report(&out)
            );
        }
        out
    }

    /// Waits for the program; panics unless a signal ends it.
    #[track_caller]
    pub fn expect_killed(mut self) -> Output {
        let out = self.wait();
        if out.code.is_some() {
            panic!(
                "expected a signal to end it, got exit code {}\n{}",
                shown_code(out.code),
                self.report(&out)
            );
        }
        out
    }

    /// Waits for the program to end, up to the deadline.
    #[track_caller]
    fn wait(&mut self) -> Output {
        let mut pause = Duration::from_millis(1);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= self.deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let out = self.read(None);
                panic!(
                    "did not end before its deadline; killed\n{}",
                    self.report(&out)
                );
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        };
        self.read(status.code())
    }

    fn read(&self, code: Option<i32>) -> Output {
        Output {
            code,
            stdout: text(&self.stdout),
            stderr: text(&self.stderr),
        }
    }

    fn report(&self, out: &Output) -> String {
        format!(
            "command: {}\nexit code: {}\n--- stdout\n{}\n--- stderr\n{}",
            self.line,
            shown_code(out.code),
            out.stdout,
            out.stderr
        )
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What an ended program printed, and its exit code (none when a signal ended it).
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// stdout as one JSON value.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

fn shown_code(code: Option<i32>) -> String {
    code.map_or("none (ended by a signal)".into(), |c| c.to_string())
}

/// All a program has written to `file` (read at offsets: the program shares its position).
fn text(file: &File) -> String {
    let mut buf = vec![0; file.metadata().unwrap().len() as usize];
    file.read_exact_at(&mut buf, 0).unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

/// The command as a shell line, for failure messages: its folder, its variables (PATH left out,
/// secrets hidden), the program and its arguments.
fn command_line(cmd: &Command) -> String {
    let quoted = |s: &OsStr| {
        let s = s.to_string_lossy();
        let plain = !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c));
        if plain {
            s.into_owned()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    };
    let mut line = String::new();
    if let Some(dir) = cmd.get_current_dir() {
        write!(line, "cd {} && ", quoted(dir.as_os_str())).unwrap();
    }
    for (name, value) in cmd.get_envs() {
        let (name, Some(value)) = (name.to_string_lossy(), value) else {
            continue;
        };
        if name == "PATH" {
            continue;
        }
        let secret = ["SECRET", "PASSWORD", "TOKEN"]
            .iter()
            .any(|s| name.contains(s));
        let value = if secret {
            "<hidden>".into()
        } else {
            quoted(value)
        };
        write!(line, "{name}={value} ").unwrap();
    }
    line.push_str(&quoted(cmd.get_program()));
    for arg in cmd.get_args() {
        write!(line, " {}", quoted(arg)).unwrap();
    }
    line
}

/// `python3 <script>`, the script named from the repository's root.
pub fn python_script(script: &str) -> TestCommand {
    TestCommand::new("python3").arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(script))
}

/// One HTTP/1.1 exchange with 127.0.0.1:`port`: (status code, body).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let body = body.unwrap_or_default();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let bad = || std::io::Error::other(format!("not an HTTP answer: {answer:?}"));
    let (head, body) = answer.split_once("\r\n\r\n").ok_or_else(bad)?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    Ok((code, body.to_string()))
}

/// The environment the predecessor's newest version gets from its Omnistrate compose file
/// (`omnistrate-compose.yaml`), as an operator fills it in for one plan: every variable is passed,
/// and the ones left blank arrive as empty strings. One custom dimension, as the compose file
/// requires (`DIMENSION1_*`); the test's own settings (S3 endpoint, Clazar emulator) come on top.
pub fn compose_vars(bucket: &str, plan: &str) -> Vec<(&'static str, String)> {
    let mut vars = scope_vars(plan).to_vec();
    vars.extend(
        [
            ("CLAZAR_CLIENT_ID", CLIENT_ID),
            ("CLAZAR_CLIENT_SECRET", SECRET),
            ("CLAZAR_CLOUD", "aws"),
            ("AWS_S3_BUCKET_NAME", bucket),
            ("AWS_REGION", "us-east-1"),
            ("DIMENSION1_NAME", "cpu_core_hours"),
            ("DIMENSION1_FORMULA", "cpu_core_hours"),
            ("DIMENSION2_NAME", ""),
            ("DIMENSION2_FORMULA", ""),
            ("DIMENSION3_NAME", ""),
            ("DIMENSION3_FORMULA", ""),
            ("START_MONTH", ""),
            ("DRY_RUN", ""),
            ("LOG_LEVEL", ""),
        ]
        .into_iter()
        .map(|(name, value)| (name, value.to_string())),
    );
    vars
}

/// The variables that scope meterbook to the service key pg:PROD:`plan`, as the predecessor's
/// deployments set them.
pub fn scope_vars(plan: &str) -> [(&'static str, String); 3] {
    [
        ("SERVICE_NAME", "pg".into()),
        ("ENVIRONMENT_TYPE", "PROD".into()),
        ("PLAN_ID", plan.into()),
    ]
}

/// A usage record as JSON, with the fields tests vary.
pub fn record(contract: Option<&str>, dimension: &str, value: Value) -> Value {
    let mut r = serde_json::json!({
        "timestamp": "2025-06-01T01:02:03Z",
        "subscriptionId": "sub-test",
        "customerId": "user-test",
        "instanceId": "instance-test",
        "podName": "pg-0",
        "hostName": "ip-10-0-0-1",
        "instanceType": "t4g.small",
        "dimension": dimension,
        "value": value,
        "pricePerUnit": 0.5,
    });
    if let Some(c) = contract {
        r["externalPayerId"] = c.into();
    }
    r
}

/// The key of a usage file in the export layout.
pub fn usage_key(plan: &str, hour: &str, subscription: &str) -> String {
    format!("omnistrate-metering/pg/PROD/{plan}/{hour}/{subscription}.json")
}

/// Every file under `dir`, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The usage files under `dir` (a part of an export tree): every file but the completion marker.
pub fn usage_files(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|f| !f.ends_with("last_success_export.json"))
        .collect()
}

/// Every record of the usage files under `dir`, read here, independently of meterbook.
pub fn usage_records(dir: &Path) -> Vec<Value> {
    usage_files(dir)
        .iter()
        .flat_map(|file| {
            let records: Vec<Value> = serde_json::from_slice(&std::fs::read(file).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            records
        })
        .collect()
}

/// The sum of the values of the usage files under `dir` per (contract, dimension).
pub fn usage_sums(dir: &Path) -> BTreeMap<(String, String), f64> {
    let mut sums = BTreeMap::new();
    for r in usage_records(dir) {
        let key = (
            r["externalPayerId"].as_str().unwrap().to_string(),
            r["dimension"].as_str().unwrap().to_string(),
        );
        *sums.entry(key).or_insert(0.0) += r["value"].as_f64().unwrap();
    }
    sums
}

/// A zip archive holding one file `name` with `body`, deflated.
pub fn zip_of(name: &str, body: &[u8]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        zip.start_file(
            name,
            zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated),
        )
        .unwrap();
        zip.write_all(body).unwrap();
        zip.finish().unwrap();
    }
    buf.into_inner()
}

/// Every file directly in `dir` (not below) with the SHA-256 of its bytes: two equal listings
/// mean no file was changed, created or removed there.
pub fn file_digests(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (
                name,
                hex::encode(Sha256::digest(std::fs::read(&p).unwrap())),
            )
        })
        .collect()
}
