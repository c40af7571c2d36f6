//! The client of a log-server cluster: finds the leader, follows leader changes and retries
//! retryable errors (appends keep their `RequestId`, so a retry is applied once). Its
//! coordination-log subscriptions long-poll the leader.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::auth::ClusterSecret;
use crate::codec::crc;
use crate::coordination::{
    check_entry_size, check_follows, CoordinationEntry, CoordinationLog, EntrySource,
    EntrySubscription, MAX_ENTRIES_PER_PAGE,
};
use crate::error::{Error, Result};
use crate::net::{ReadPage, Request, Response, RpcClient, MAX_PAYLOAD_BYTES};
use crate::types::{LedgerInfo, LedgerRead, RequestId};
use crate::{BoxFuture, Ledgers};

/// Timeouts and the cluster secret of a [`LogClient`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The cluster secret to prove to every server (`None`: only servers without one accept
    /// this client).
    pub secret: Option<ClusterSecret>,
    /// Time limit of one request to one server.
    pub request_timeout: Duration,
    /// Total time a call keeps retrying retryable errors before giving up with the last one.
    pub retry_for: Duration,
    /// How long a subscription's long poll waits at the server for a new entry before it is
    /// answered empty and re-issued (capped at 60 s by the server). Its request may take this
    /// plus `request_timeout`.
    pub subscription_wait: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            secret: None,
            request_timeout: Duration::from_secs(5),
            retry_for: Duration::from_secs(30),
            subscription_wait: Duration::from_secs(10),
        }
    }
}

/// A handle to a log-server cluster implementing [`Ledgers`]. Cheap to clone; clones share
/// connections and the known leader.
#[derive(Clone)]
pub struct LogClient {
    inner: Arc<Inner>,
}

struct Inner {
    addrs: Vec<String>,
    options: ClientOptions,
    leader: Mutex<Option<String>>,
    next: Mutex<usize>,
    conns: Mutex<HashMap<String, Arc<RpcClient>>>,
}

impl LogClient {
    /// A client for the servers at `addrs` (any subset of the cluster; leader hints are
    /// followed to other members). Connections are made lazily, so this does not fail on an
    /// unreachable server.
    pub fn connect<S: Into<String>>(addrs: impl IntoIterator<Item = S>) -> Result<LogClient> {
        Self::with_options(addrs, ClientOptions::default())
    }

    /// Like [`LogClient::connect`] with explicit timeouts.
    pub fn with_options<S: Into<String>>(
        addrs: impl IntoIterator<Item = S>,
        options: ClientOptions,
    ) -> Result<LogClient> {
        let addrs: Vec<String> = addrs.into_iter().map(Into::into).collect();
        if addrs.is_empty() {
            return Err(Error::InvalidRequest("no log server address given".into()));
        }
        Ok(LogClient {
            inner: Arc::new(Inner {
                addrs,
                options,
                leader: Mutex::new(None),
                next: Mutex::new(0),
                conns: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The leader address this client currently sends to, if known.
    pub fn known_leader(&self) -> Option<String> {
        self.inner.leader.lock().expect("leader lock").clone()
    }

    fn conn(&self, addr: &str) -> Arc<RpcClient> {
        self.inner
            .conns
            .lock()
            .expect("conns lock")
            .entry(addr.to_string())
            .or_insert_with(|| Arc::new(RpcClient::new(addr, self.inner.options.secret.clone())))
            .clone()
    }

    fn target(&self) -> String {
        if let Some(l) = self.inner.leader.lock().expect("leader lock").clone() {
            return l;
        }
        let mut next = self.inner.next.lock().expect("next lock");
        let a = self.inner.addrs[*next % self.inner.addrs.len()].clone();
        *next += 1;
        a
    }

    /// Sends `make()` to the leader, following hints and retrying retryable errors until
    /// `retry_for` has passed.
    async fn call<T>(
        &self,
        make: impl Fn() -> Request,
        unpack: impl Fn(Response) -> Result<T>,
    ) -> Result<T> {
        self.call_within(self.inner.options.request_timeout, make, unpack)
            .await
    }

    /// Like [`LogClient::call`], each request to a server limited to `timeout`.
    async fn call_within<T>(
        &self,
        timeout: Duration,
        make: impl Fn() -> Request,
        unpack: impl Fn(Response) -> Result<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + self.inner.options.retry_for;
        let mut backoff = Duration::from_millis(10);
        loop {
            let addr = self.target();
            let result = match self.conn(&addr).call(make(), timeout).await {
                Ok(Response::Failed(e)) => Err(e),
                Ok(resp) => unpack(resp),
                Err(e) => Err(e),
            };
            let err = match result {
                Ok(v) => {
                    *self.inner.leader.lock().expect("leader lock") = Some(addr);
                    return Ok(v);
                }
                Err(e) => e,
            };
            if !err.is_retryable() || Instant::now() >= deadline {
                return Err(err);
            }
            let hint = match &err {
                Error::NotLeader {
                    leader_addr: Some(a),
                    ..
                } if *a != addr => Some(a.clone()),
                _ => None,
            };
            let follow = hint.is_some();
            *self.inner.leader.lock().expect("leader lock") = hint;
            if !follow {
                // No usable hint: an election is probably under way. Back off, then try the
                // next server.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(200));
            }
        }
    }

    /// Appends one record (see [`Ledgers::append`]).
    pub async fn append(&self, ledger: &str, request: RequestId, record: Vec<u8>) -> Result<u64> {
        self.append_with(ledger, None, request, record).await
    }

    /// Appends one record unless the ledger is fenced above `fence` (see
    /// [`Ledgers::append_fenced`]).
    pub async fn append_fenced(
        &self,
        ledger: &str,
        fence: u64,
        request: RequestId,
        record: Vec<u8>,
    ) -> Result<u64> {
        self.append_with(ledger, Some(fence), request, record).await
    }

    async fn append_with(
        &self,
        ledger: &str,
        fence: Option<u64>,
        request: RequestId,
        record: Vec<u8>,
    ) -> Result<u64> {
        check_payload(|| format!("record for ledger {ledger:?}"), record.len())?;
        let sum = crc(&record);
        let record = Bytes::from(record);
        self.call(
            || {
                Request::Append {
                    ledger: ledger.to_string(),
                    request,
                    record: record.clone(),
                    crc: sum,
                }
                .fenced(fence)
            },
            |r| match r {
                Response::Appended(r) => r,
                other => Err(unexpected(other)),
            },
        )
        .await
    }

    /// Reads a ledger (see [`Ledgers::read`]), page after page (a server answers at most
    /// about 32 MiB of entries at once, so that every answer fits in a frame).
    pub async fn read(&self, ledger: &str, from: u64) -> Result<LedgerRead> {
        let mut out = LedgerRead::default();
        let mut next = from;
        loop {
            let ReadPage { read, complete } = self
                .call(
                    || Request::Read {
                        ledger: ledger.to_string(),
                        from: next,
                    },
                    |r| match r {
                        Response::Read(r) => r,
                        other => Err(unexpected(other)),
                    },
                )
                .await?;
            out.stats.records_scanned += read.stats.records_scanned;
            out.stats.bytes_read += read.stats.bytes_read;
            if let Some((covers, _)) = &read.snapshot {
                // A snapshot (the first page's, or a newer one if the ledger was compacted
                // between pages) reflects every entry read before it.
                next = covers + 1;
                out.snapshot = read.snapshot;
                out.entries.clear();
            }
            if let Some((last, _)) = read.entries.last() {
                next = last + 1;
            }
            let progressed = out.snapshot.is_some() || !read.entries.is_empty();
            out.entries.extend(read.entries);
            if complete {
                return Ok(out);
            }
            if !progressed {
                return Err(Error::Fatal(format!(
                    "the server answered an incomplete, empty page of ledger {ledger:?} from {next}"
                )));
            }
        }
    }

    /// Stores a snapshot and compacts (see [`Ledgers::snapshot`]).
    pub async fn snapshot(&self, ledger: &str, covers_position: u64, bytes: Vec<u8>) -> Result<()> {
        self.snapshot_with(ledger, None, covers_position, bytes)
            .await
    }

    /// Stores a snapshot and compacts unless the ledger is fenced above `fence` (see
    /// [`Ledgers::snapshot_fenced`]).
    pub async fn snapshot_fenced(
        &self,
        ledger: &str,
        fence: u64,
        covers_position: u64,
        bytes: Vec<u8>,
    ) -> Result<()> {
        self.snapshot_with(ledger, Some(fence), covers_position, bytes)
            .await
    }

    async fn snapshot_with(
        &self,
        ledger: &str,
        fence: Option<u64>,
        covers_position: u64,
        bytes: Vec<u8>,
    ) -> Result<()> {
        check_payload(|| format!("snapshot of ledger {ledger:?}"), bytes.len())?;
        let sum = crc(&bytes);
        let bytes = Bytes::from(bytes);
        self.call(
            || {
                Request::Snapshot {
                    ledger: ledger.to_string(),
                    covers: covers_position,
                    bytes: bytes.clone(),
                    crc: sum,
                }
                .fenced(fence)
            },
            |r| match r {
                Response::Snapshotted(r) => r,
                other => Err(unexpected(other)),
            },
        )
        .await
    }

    /// Ledger size (see [`Ledgers::info`]).
    pub async fn info(&self, ledger: &str) -> Result<LedgerInfo> {
        self.call(
            || Request::Info {
                ledger: ledger.to_string(),
            },
            |r| match r {
                Response::Info(r) => r,
                other => Err(unexpected(other)),
            },
        )
        .await
    }
}

impl LogClient {
    /// Appends an entry to the coordination log (see [`CoordinationLog::append_entry`]); an
    /// entry over [`MAX_ENTRY_BYTES`](crate::MAX_ENTRY_BYTES) is refused before it is sent.
    pub async fn append_entry(&self, request: RequestId, entry: Vec<u8>) -> Result<u64> {
        check_entry_size(entry.len())?;
        let sum = crc(&entry);
        let entry = Bytes::from(entry);
        self.call(
            || Request::AppendEntry {
                request,
                entry: entry.clone(),
                crc: sum,
            },
            |r| match r {
                Response::EntryAppended(r) => r,
                other => Err(unexpected(other)),
            },
        )
        .await
    }

    /// Reads the coordination log (see [`CoordinationLog::read_entries`]), page after page.
    pub async fn read_entries(&self, from: u64, max: usize) -> Result<Vec<CoordinationEntry>> {
        let mut out: Vec<CoordinationEntry> = Vec::new();
        let mut next = from;
        while out.len() < max {
            let ask = (max - out.len()).min(MAX_ENTRIES_PER_PAGE) as u64;
            let page: Vec<CoordinationEntry> = self
                .call(
                    || Request::ReadEntries {
                        from: next,
                        max: ask,
                    },
                    unpack_entries,
                )
                .await?;
            let Some((last, _)) = page.last() else { break };
            check_follows(next, &page)?;
            next = last + 1;
            out.extend(page);
        }
        Ok(out)
    }

    /// The coordination log's last position (see [`CoordinationLog::last_entry_position`]).
    pub async fn last_entry_position(&self) -> Result<u64> {
        self.call(
            || Request::LastEntryPosition,
            |r| match r {
                Response::LastEntryPosition(r) => r,
                other => Err(unexpected(other)),
            },
        )
        .await
    }

    /// Subscribes to the coordination log from `from` (see
    /// [`CoordinationLog::subscribe_entries`]): long polls of the leader, each waiting at most
    /// [`ClientOptions::subscription_wait`] at the server.
    pub fn subscribe_entries(&self, from: u64) -> Result<EntrySubscription> {
        EntrySubscription::new(
            from,
            Box::new(LongPoll {
                client: self.clone(),
            }),
        )
    }

    /// One long poll: entries from `from` as soon as the leader has one, or none after
    /// `subscription_wait`. Retried on other servers like every call.
    async fn wait_entries(&self, from: u64) -> Result<Vec<CoordinationEntry>> {
        let wait = self.inner.options.subscription_wait;
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        self.call_within(
            self.inner.options.request_timeout + wait,
            || Request::WaitEntries {
                from,
                max: MAX_ENTRIES_PER_PAGE as u64,
                wait_ms,
            },
            unpack_entries,
        )
        .await
    }
}

/// The cluster's subscription source: long polls through the client.
struct LongPoll {
    client: LogClient,
}

impl EntrySource for LongPoll {
    fn fetch(&self, from: u64) -> BoxFuture<'static, Result<Vec<CoordinationEntry>>> {
        let client = self.client.clone();
        Box::pin(async move { client.wait_entries(from).await })
    }
}

fn unpack_entries(r: Response) -> Result<Vec<CoordinationEntry>> {
    match r {
        Response::Entries(r) => r.map(Into::into),
        other => Err(unexpected(other)),
    }
}

/// Refuses a record or snapshot that could not travel in a frame, before anything is sent.
fn check_payload(what: impl FnOnce() -> String, bytes: usize) -> Result<()> {
    if bytes > MAX_PAYLOAD_BYTES {
        return Err(Error::TooLarge {
            what: what(),
            bytes: bytes as u64,
            limit: MAX_PAYLOAD_BYTES as u64,
        });
    }
    Ok(())
}

fn unexpected(r: Response) -> Error {
    Error::Fatal(format!("unexpected response: {r:?}"))
}

impl Ledgers for LogClient {
    fn append<'a>(
        &'a self,
        ledger: &'a str,
        request: RequestId,
        record: Vec<u8>,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(LogClient::append(self, ledger, request, record))
    }

    fn read<'a>(
        &'a self,
        ledger: &'a str,
        from_position: u64,
    ) -> BoxFuture<'a, Result<LedgerRead>> {
        Box::pin(LogClient::read(self, ledger, from_position))
    }

    fn snapshot<'a>(
        &'a self,
        ledger: &'a str,
        covers_position: u64,
        bytes: Vec<u8>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(LogClient::snapshot(self, ledger, covers_position, bytes))
    }

    fn append_fenced<'a>(
        &'a self,
        ledger: &'a str,
        fence: u64,
        request: RequestId,
        record: Vec<u8>,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(LogClient::append_fenced(
            self, ledger, fence, request, record,
        ))
    }

    fn snapshot_fenced<'a>(
        &'a self,
        ledger: &'a str,
        fence: u64,
        covers_position: u64,
        bytes: Vec<u8>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(LogClient::snapshot_fenced(
            self,
            ledger,
            fence,
            covers_position,
            bytes,
        ))
    }

    fn info<'a>(&'a self, ledger: &'a str) -> BoxFuture<'a, Result<LedgerInfo>> {
        Box::pin(LogClient::info(self, ledger))
    }
}

impl CoordinationLog for LogClient {
    fn append_entry<'a>(
        &'a self,
        request: RequestId,
        entry: Vec<u8>,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(LogClient::append_entry(self, request, entry))
    }

    fn read_entries<'a>(
        &'a self,
        from: u64,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<CoordinationEntry>>> {
        Box::pin(LogClient::read_entries(self, from, max))
    }

    fn last_entry_position(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(LogClient::last_entry_position(self))
    }

    fn subscribe_entries(&self, from: u64) -> Result<EntrySubscription> {
        LogClient::subscribe_entries(self, from)
    }
}
