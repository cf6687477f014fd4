//! The lease: one run at a time across hosts. A small JSON object beside the state
//! (`KEY.lease`), created with `If-None-Match: *`, renewed and taken over (once expired or
//! released) with `If-Match`, so two hosts can never both believe they hold it. A holder that dies
//! leaves a lease that expires; the next run takes over. On the holder's own host it is taken
//! over at once: the lease names the holding process (boot, pid namespace, pid and start time),
//! and a process that is gone (or a pid now used by another process) holds nothing. Expiry is
//! judged by the reader's clock against the holder's, so hosts need roughly synchronised clocks
//! (NTP), well within the lease duration.

use std::time::Duration;

use anyhow::{Context, Result};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::remote::{self, Condition, Refused};
use super::StateLocation;
use crate::error::{exit, exit_code_for, Fatal};
use crate::period::format_utc;
use crate::s3::{Op, S3ErrorKind};

/// What the lease object holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// `host:pid:random`, unique per acquisition.
    pub holder: String,
    pub host: String,
    pub pid: u32,
    pub acquired_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Given back by its holder; free for the next run.
    pub released: bool,
    /// The holding process, when the lease is tied to one (`run`, `lease acquire --hold`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<HolderProcess>,
}

/// Which process holds a lease, precisely enough to tell, on its host, that it is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderProcess {
    /// `/proc/sys/kernel/random/boot_id`: pids and start times mean something only within one
    /// boot.
    pub boot_id: String,
    /// The pid namespace (`/proc/self/ns/pid`): containers on one host share a host name
    /// and a boot, but not their pids.
    pub pid_namespace: String,
    /// The process's start, in clock ticks after boot (`/proc/<pid>/stat`, field 22): a pid
    /// reused by another process has another.
    pub start_ticks: u64,
}

impl HolderProcess {
    /// This process; `None` where `/proc` does not say (then only expiry frees its leases).
    pub fn current() -> Option<HolderProcess> {
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let pid_namespace = std::fs::read_link("/proc/self/ns/pid").ok()?;
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        Some(HolderProcess {
            boot_id: boot_id.trim().to_string(),
            pid_namespace: pid_namespace.to_string_lossy().into_owned(),
            start_ticks: parse_stat(&stat)?.start_ticks,
        })
    }

    /// Whether process `pid` of this namespace is certainly not this one: there is no such
    /// process, only its zombie, or another process started under the same pid. A process that
    /// exists but that `/proc` does not show (mounted with `hidepid`) may be it: not gone.
    fn is_gone(&self, pid: u32) -> bool {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        if pid <= 0 {
            return false; // kill(0 or -1) would ask about a group of processes
        }
        // SAFETY: kill(2) with signal 0 sends nothing; it only says whether the process exists.
        let exists = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !exists {
            return true;
        }
        match std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| parse_stat(&s)) {
            Ok(Some(stat)) => stat.dead || stat.start_ticks != self.start_ticks,
            _ => false,
        }
    }
}

/// What the lease needs of a `/proc/<pid>/stat` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    /// Field 3, the state, says zombie or dead.
    dead: bool,
    /// Field 22: when the process started, in clock ticks after boot.
    start_ticks: u64,
}

/// Reads a `/proc/<pid>/stat` line. The command name (field 2) may hold spaces and parentheses,
/// so fields are counted after its last `)`.
fn parse_stat(stat: &str) -> Option<Stat> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    Some(Stat {
        dead: matches!(fields.first(), Some(&"Z" | &"X" | &"x")),
        start_ticks: fields.get(22 - 3)?.parse().ok()?,
    })
}

impl LeaseRecord {
    /// Whether a new holder may take it at `now`.
    pub fn is_free(&self, now: DateTime<Utc>) -> bool {
        self.released || self.expires_at <= now
    }

    /// Whether it is held by a process of this host (`host`, seen from `here`) that is gone. A
    /// lease not tied to a process, or held on another host, another boot or in another pid
    /// namespace, is never judged so: it expires.
    pub fn holder_gone(&self, host: &str, here: &HolderProcess) -> bool {
        self.host == host
            && self.process.as_ref().is_some_and(|p| {
                p.boot_id == here.boot_id
                    && p.pid_namespace == here.pid_namespace
                    && p.is_gone(self.pid)
            })
    }

    /// One line: who holds it and until when.
    pub fn describe(&self, now: DateTime<Utc>) -> String {
        let state = if self.released {
            "released".to_string()
        } else if self.expires_at <= now {
            format!("expired at {}", format_utc(self.expires_at))
        } else {
            format!("held until {}", format_utc(self.expires_at))
        };
        format!(
            "{state} by {} (host {}, pid {}, acquired {})",
            self.holder,
            self.host,
            self.pid,
            format_utc(self.acquired_at)
        )
    }
}

/// The lease as read from S3, with the ETag that conditions the next write.
#[derive(Debug, Clone)]
pub struct Current {
    pub record: LeaseRecord,
    pub etag: String,
}

/// Reads the lease; `None` when there is none.
pub async fn read(client: &Client, loc: &StateLocation) -> Result<Option<Current>> {
    let key = loc.lease_key();
    let out = match client
        .get_object()
        .bucket(&loc.bucket)
        .key(&key)
        .send()
        .await
    {
        Ok(out) => out,
        Err(e) => {
            return match remote::explain(&e, Op::Get, &loc.bucket, &key) {
                e if e.kind == S3ErrorKind::NotFound => Ok(None),
                e => Err(e.into()),
            }
        }
    };
    let etag = out.e_tag().unwrap_or_default().to_string();
    let bytes = out
        .body
        .collect()
        .await
        .with_context(|| format!("reading the lease s3://{}/{key}", loc.bucket))?
        .into_bytes();
    let record = serde_json::from_slice(&bytes).map_err(|e| {
        Fatal::Config(format!(
            "s3://{}/{key} is not a meterbook lease ({e}); delete it if nothing else uses that key",
            loc.bucket
        ))
    })?;
    Ok(Some(Current { record, etag }))
}

async fn write(
    client: &Client,
    loc: &StateLocation,
    record: &LeaseRecord,
    condition: &Condition,
) -> Result<std::result::Result<String, Refused>> {
    let body = ByteStream::from(serde_json::to_vec(record)?);
    remote::upload(
        client,
        &loc.bucket,
        &loc.lease_key(),
        body,
        Default::default(),
        condition,
    )
    .await
}

/// A lease this process holds.
#[derive(Debug)]
pub struct Lease {
    client: Client,
    loc: StateLocation,
    record: LeaseRecord,
    etag: String,
    duration: Duration,
}

/// Takes the lease: creates it, or takes over a released or expired one, or one whose holding
/// process on this host is gone. When another holder has it, fails with [`Fatal::Conflict`]
/// naming the holder and expiry, or with `wait` polls until it is free. With `tied_to_process`
/// the lease names this process, so that this host takes it over as soon as the process is gone;
/// without, it is held until released or expired, whatever becomes of this process.
pub async fn acquire(
    client: &Client,
    loc: &StateLocation,
    duration: Duration,
    wait: bool,
    tied_to_process: bool,
) -> Result<Lease> {
    let host = super::host_name();
    let pid = std::process::id();
    let holder = format!("{host}:{pid}:{:08x}", rand::random::<u32>());
    let ttl = chrono::Duration::from_std(duration).context("lease duration")?;
    let process = HolderProcess::current();
    loop {
        let now = Utc::now();
        let condition = match read(client, loc).await? {
            None => Condition::Create,
            Some(c) if c.record.is_free(now) => {
                if !c.record.released {
                    tracing::warn!("taking over an expired lease: {}", c.record.describe(now));
                }
                Condition::Replace(c.etag)
            }
            Some(c)
                if process
                    .as_ref()
                    .is_some_and(|here| c.record.holder_gone(&host, here)) =>
            {
                tracing::warn!(
                    "taking over the lease at once: its holding process {} on this host is gone ({})",
                    c.record.pid,
                    c.record.describe(now)
                );
                Condition::Replace(c.etag)
            }
            Some(c) if wait => {
                let left = (c.record.expires_at - now).to_std().unwrap_or_default();
                tracing::info!("waiting for the lease, {}", c.record.describe(now));
                tokio::time::sleep(left.min(Duration::from_secs(5)) + Duration::from_millis(50))
                    .await;
                continue;
            }
            Some(c) => {
                return Err(Fatal::Conflict(format!(
                    "another run holds the lease s3://{}/{}: {}; wait for it to finish (or \
                     pass --wait), or, if that host is gone, wait until the lease expires",
                    loc.bucket,
                    loc.lease_key(),
                    c.record.describe(now)
                ))
                .into())
            }
        };
        let record = LeaseRecord {
            holder: holder.clone(),
            host: host.clone(),
            pid,
            acquired_at: now,
            expires_at: now + ttl,
            released: false,
            process: process.clone().filter(|_| tied_to_process),
        };
        // Refused: another host wrote in between; read again to see who.
        if let Ok(etag) = write(client, loc, &record, &condition).await? {
            return Ok(Lease {
                client: client.clone(),
                loc: loc.clone(),
                record,
                etag,
                duration,
            });
        }
    }
}

/// Gives back whatever lease is there (an operator's way out), conditional on the version read.
/// Returns the record that was released, if one was held.
pub async fn release_any(client: &Client, loc: &StateLocation) -> Result<Option<LeaseRecord>> {
    let Some(current) = read(client, loc).await? else {
        return Ok(None);
    };
    if current.record.released {
        return Ok(None);
    }
    let released = LeaseRecord {
        released: true,
        ..current.record.clone()
    };
    match write(client, loc, &released, &Condition::Replace(current.etag)).await? {
        Ok(_) => Ok(Some(current.record)),
        Err(_) => Err(Fatal::Conflict(
            "the lease changed while releasing it; look again with `meterbook sync lease show`"
                .into(),
        )
        .into()),
    }
}

impl Lease {
    pub fn record(&self) -> &LeaseRecord {
        &self.record
    }

    /// Extends the lease by its duration from now. Losing it is a [`Fatal::Conflict`].
    pub async fn renew(&mut self) -> Result<()> {
        let mut next = self.record.clone();
        next.expires_at = Utc::now() + chrono::Duration::from_std(self.duration)?;
        let condition = Condition::Replace(self.etag.clone());
        match write(&self.client, &self.loc, &next, &condition).await? {
            Ok(etag) => {
                self.etag = etag;
                self.record = next;
                Ok(())
            }
            Err(_) => Err(self.lost()),
        }
    }

    /// Gives the lease back.
    pub async fn release(self) -> Result<()> {
        let released = LeaseRecord {
            released: true,
            expires_at: Utc::now(),
            ..self.record.clone()
        };
        let condition = Condition::Replace(self.etag.clone());
        match write(&self.client, &self.loc, &released, &condition).await? {
            Ok(_) => Ok(()),
            Err(_) => Err(self.lost()),
        }
    }

    fn lost(&self) -> anyhow::Error {
        Fatal::Conflict(format!(
            "lost the lease s3://{}/{}: another host took it over (it expired at {}); its work \
             and this run's may overlap, so check `meterbook sync status` before going on",
            self.loc.bucket,
            self.loc.lease_key(),
            format_utc(self.record.expires_at)
        ))
        .into()
    }

    /// Keeps renewing the lease in the background (every third of its duration) until released.
    pub fn keep_alive(self) -> HeldLease {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut lease = self;
            let every = lease.duration / 3;
            loop {
                tokio::select! {
                    _ = &mut stopped => return Ok(lease),
                    _ = tokio::time::sleep(every) => {}
                }
                if let Err(e) = lease.renew().await {
                    if exit_code_for(&e) == exit::CONFLICT || lease.record.expires_at <= Utc::now()
                    {
                        return Err(e);
                    }
                    tracing::warn!("renewing the lease failed, will retry: {e:#}");
                }
            }
        });
        HeldLease { stop, task }
    }
}

/// A lease renewed in the background; [`HeldLease::release`] stops renewing and gives it back.
pub struct HeldLease {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<Lease>>,
}

impl HeldLease {
    /// Stops renewing and releases; an error if the lease was lost meanwhile.
    pub async fn release(self) -> Result<()> {
        // The task may have ended already (lease lost); its result says so.
        let _ = self.stop.send(());
        let lease = self.task.await.context("the lease renewal task")??;
        lease.release().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_free_when_released_or_expired() {
        let t = DateTime::from_timestamp(1_750_000_000, 0).unwrap();
        let held = LeaseRecord {
            holder: "h:1:0".into(),
            host: "h".into(),
            pid: 1,
            acquired_at: t,
            expires_at: t + chrono::Duration::seconds(60),
            released: false,
            process: None,
        };
        assert!(!held.is_free(t + chrono::Duration::seconds(59)));
        assert!(held.is_free(t + chrono::Duration::seconds(60)));
        let released = LeaseRecord {
            released: true,
            ..held
        };
        assert!(released.is_free(t));
    }

    #[test]
    fn the_start_time_is_field_22_even_when_the_name_has_spaces_and_parentheses() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000 100 18446744073709551615";
        let alive = Stat {
            dead: false,
            start_ticks: 987654,
        };
        assert_eq!(parse_stat(stat), Some(alive));
        let zombie = "4242 (gone) Z 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 0 0";
        assert_eq!(
            parse_stat(zombie),
            Some(Stat {
                dead: true,
                ..alive
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn only_a_process_of_this_host_boot_and_namespace_that_is_gone_gives_up_its_lease() {
        let Some(here) = HolderProcess::current() else {
            eprintln!("SKIPPED: no /proc");
            return;
        };
        let t = Utc::now();
        let mine = LeaseRecord {
            holder: "h:1:0".into(),
            host: "this-host".into(),
            pid: std::process::id(),
            acquired_at: t,
            expires_at: t + chrono::Duration::seconds(600),
            released: false,
            process: Some(here.clone()),
        };
        // This very process is alive: it holds its lease.
        assert!(!mine.holder_gone("this-host", &here));
        // A pid no process has, or a pid given to a process that started later: gone.
        let dead = LeaseRecord {
            pid: i32::MAX as u32,
            ..mine.clone()
        };
        assert!(dead.holder_gone("this-host", &here));
        let reused = LeaseRecord {
            process: Some(HolderProcess {
                start_ticks: here.start_ticks + 1,
                ..here.clone()
            }),
            ..mine.clone()
        };
        assert!(reused.holder_gone("this-host", &here));
        // A pid that names no single process (0 and -1 name groups) is never judged gone.
        for nonsense in [0, u32::MAX] {
            let odd = LeaseRecord {
                pid: nonsense,
                ..mine.clone()
            };
            assert!(!odd.holder_gone("this-host", &here), "{nonsense}");
        }
        // Another host, another boot, another pid namespace, or no process: only expiry frees it.
        assert!(!reused.holder_gone("other-host", &here));
        for other in [
            HolderProcess {
                boot_id: "another-boot".into(),
                ..here.clone()
            },
            HolderProcess {
                pid_namespace: "pid:[1]".into(),
                ..here.clone()
            },
        ] {
            assert!(!reused.holder_gone("this-host", &other));
        }
        let untied = LeaseRecord {
            process: None,
            ..reused
        };
        assert!(!untied.holder_gone("this-host", &here));
    }
}
