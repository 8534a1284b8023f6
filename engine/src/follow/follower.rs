//! The follower: once the local database is ready (see `open`), applies what is new until
//! stopped: what a primary streams, or what polls of the replica find.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use ltx::{Txid, TxidRange};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::channel::ChannelReader;
use super::local::LocalDb;
use super::open::{Prepared, prepare};
use super::position::{self, Position};
use super::{FollowError, FollowOptions, FollowStatus};
use crate::plan::{PlanError, plan_files};
use crate::storage::{ChunkedReader, FileInfo, Level, Replica};
use crate::stream::wire::Head;
use crate::stream::{PrimaryUrl, StreamConnection};

/// Bytes read from the replica at a time while applying a file: a follower's memory
/// stays near this whatever the files' sizes.
const CHUNK: u64 = 1 << 20;

/// Files a stream brought whole already are applied together, up to this many bytes: a
/// follower that fell behind catches up in few transactions, its memory still bounded.
const BATCH_MAX: u64 = 4 << 20;

/// The longest wait between tries after failures in a row.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The longest a listing of the replica may take before the follower says so and tries
/// again (a stalled store would otherwise hold it silently).
const LIST_TIMEOUT: Duration = Duration::from_secs(30);

/// How soon a stream that ended after bringing files is opened again (after the catch-up
/// from the replica that follows its end).
const RECONNECT_AFTER: Duration = Duration::from_millis(20);

/// Why a stream ends when the primary's newest TXID is below the database's: its history
/// was replaced (a new database, a restore over it) and the replica says which it is.
const PRIMARY_BEHIND: &str = "the primary's newest TXID is below this database's";

/// A file to apply: its name (for errors) and its bytes.
type Input = (String, Box<dyn BufRead + Send>);

/// A local database following a replica, on a task of its own.
#[derive(Debug)]
pub struct Follower {
    status: watch::Receiver<FollowStatus>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), FollowError>>,
    path: PathBuf,
    restored: bool,
}

impl Follower {
    /// Starts following `replica` into the database at `db`: restores it first if it does
    /// not exist (waiting for the replica's first file if it holds none yet); goes on from
    /// its position if a follower made it. `force` replaces a database that is there but
    /// was not made by a follower.
    pub async fn start(
        replica: Replica,
        db: &Path,
        force: bool,
        options: FollowOptions,
    ) -> Result<Follower, FollowError> {
        Follower::start_from(None, replica, db, force, options).await
    }

    /// [`Follower::start`], with each new file pushed by the primary at `primary` as soon
    /// as it is staged there (see [`crate::stream`]); `replica` is where the database is
    /// restored from, and caught up from when the stream no longer reaches back to it or
    /// the primary cannot be reached.
    pub async fn start_streaming(
        primary: PrimaryUrl,
        replica: Replica,
        db: &Path,
        force: bool,
        options: FollowOptions,
    ) -> Result<Follower, FollowError> {
        Follower::start_from(Some(primary), replica, db, force, options).await
    }

    async fn start_from(
        primary: Option<PrimaryUrl>,
        replica: Replica,
        db: &Path,
        force: bool,
        options: FollowOptions,
    ) -> Result<Follower, FollowError> {
        let Prepared {
            local,
            position,
            restored,
            rebuild,
        } = prepare(&replica, db, force, options.interval).await?;
        let status = FollowStatus {
            txid: position.txid,
            newest: position.newest.max(position.txid),
            history: position.history,
            ..FollowStatus::default()
        };
        let (status_tx, status) = watch::channel(status);
        let (stop, stopped) = watch::channel(false);
        let run = Run {
            primary,
            pending_rebuild: rebuild,
            failures: 0,
            replica,
            path: db.to_owned(),
            local: Some(local),
            position,
            options,
            status: status_tx,
            stopped,
            idle_polls: 0,
            reconnect_soon: false,
        };
        let task = tokio::spawn(run.run());
        Ok(Follower {
            status,
            stop,
            task,
            path: db.to_owned(),
            restored,
        })
    }

    /// Whether `start` restored the database (else it went on from its saved position).
    pub fn restored(&self) -> bool {
        self.restored
    }

    /// The local database.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the follower stands now.
    pub fn status(&self) -> FollowStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every change of status.
    pub fn watch(&self) -> watch::Receiver<FollowStatus> {
        self.status.clone()
    }

    /// Waits until the local database holds `txid` (or a later one): an application that
    /// wrote through the primary and got its TXID back reads its own write here after
    /// this. Returns the status then; an error if the follower stopped first.
    pub async fn wait_for(&self, txid: Txid) -> Result<FollowStatus, FollowError> {
        let mut rx = self.status.clone();
        let status = rx
            .wait_for(|s| s.txid >= txid || s.stopped)
            .await
            .map_err(|_| FollowError::Panicked("the follower's task is gone".to_owned()))?
            .clone();
        if status.txid >= txid {
            Ok(status)
        } else {
            Err(FollowError::Stopped {
                at: status.txid,
                wanted: txid,
                why: status.error,
            })
        }
    }

    /// Waits until the follower stops by itself (a failure it cannot go past).
    pub async fn join(self) -> Result<(), FollowError> {
        self.task
            .await
            .map_err(|e| FollowError::Panicked(e.to_string()))?
    }

    /// Stops following; the database stays at the last TXID applied.
    pub async fn stop(self) -> Result<(), FollowError> {
        let _ = self.stop.send(true);
        self.join().await
    }
}

/// A listing of `replica`, or an error once it has taken [`LIST_TIMEOUT`].
async fn listed<T>(
    replica: &Replica,
    listing: impl Future<Output = Result<T, crate::storage::StorageError>>,
) -> Result<T, FollowError> {
    match tokio::time::timeout(LIST_TIMEOUT, listing).await {
        Ok(listed) => Ok(listed?),
        Err(_) => Err(FollowError::ReplicaSlow {
            replica: replica.name().to_owned(),
            waited: LIST_TIMEOUT,
        }),
    }
}

/// The follower's task.
struct Run {
    /// The primary whose stream is followed, if any (else the replica is polled).
    primary: Option<PrimaryUrl>,
    /// The database is not what its position says: rebuilt before anything else.
    pending_rebuild: Option<String>,
    /// Steps that failed in a row (the wait before the next grows with them).
    failures: u32,
    replica: Replica,
    path: PathBuf,
    /// Lent to a blocking thread while a transaction is applied.
    local: Option<LocalDb>,
    position: Position,
    options: FollowOptions,
    status: watch::Sender<FollowStatus>,
    stopped: watch::Receiver<bool>,
    /// Polls in a row that found nothing new.
    idle_polls: u32,
    /// The last stream brought files before it ended: it is opened again at once, not after
    /// the poll interval (at 1,000 commits/s a second's wait is a second of lag).
    reconnect_soon: bool,
}

/// What one poll decided to apply.
enum Step {
    /// Nothing new.
    Nothing,
    /// These files, each as a transaction of its own.
    Each(Vec<FileInfo>),
    /// These files (a plan from the position) as one transaction.
    All(Vec<FileInfo>),
    /// The source's history was replaced: rebuild from its newest state.
    Rebuild(String),
    /// The replica's files from the position reach `reached`, short of the `reach` the
    /// database may hold.
    Short { reached: Txid, reach: Txid },
}

impl Run {
    async fn run(mut self) -> Result<(), FollowError> {
        let result = loop {
            let step = match (self.pending_rebuild.take(), self.primary.clone()) {
                (Some(why), _) => self.rebuild(why).await,
                (None, Some(primary)) => self.follow_stream(&primary).await,
                (None, None) => self.poll().await,
            };
            let step = match step {
                // Someone wrote to the database: it is made the replica's again.
                Err(e @ FollowError::LocalWritten { .. }) => {
                    tracing::warn!(db = %self.path.display(), error = %e, "rebuilding");
                    self.accept_local_as_is().await?;
                    self.rebuild(e.to_string()).await
                }
                other => other,
            };
            match step {
                Ok(()) => {
                    self.failures = 0;
                    self.status.send_modify(|s| s.error = None);
                }
                Err(e) if e.is_fatal() => break Err(e),
                Err(e) => {
                    self.failures += 1;
                    tracing::warn!(db = %self.path.display(), error = %e, failures = self.failures, "following: will try again");
                    self.status.send_modify(|s| s.error = Some(e.to_string()));
                }
            }
            if *self.stopped.borrow() {
                break Ok(());
            }
            // Failures in a row wait longer and longer, up to half a minute.
            let wait = if std::mem::take(&mut self.reconnect_soon) && self.failures == 0 {
                RECONNECT_AFTER
            } else {
                self.options
                    .interval
                    .saturating_mul(1 << self.failures.min(8))
                    .min(MAX_BACKOFF.max(self.options.interval))
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.stopped.changed() => {}
            }
            if *self.stopped.borrow() {
                break Ok(());
            }
        };
        self.status.send_modify(|s| {
            s.stopped = true;
            s.connected = false;
            if let Err(e) = &result {
                s.error = Some(e.to_string());
            }
        });
        result
    }

    /// Takes the local database as it is now as the follower's (before a rebuild that
    /// rewrites all of it).
    async fn accept_local_as_is(&mut self) -> Result<(), FollowError> {
        let mut local = self
            .local
            .take()
            .ok_or_else(|| FollowError::Panicked("the local database is lent out".to_owned()))?;
        let (local, accepted) = tokio::task::spawn_blocking(move || {
            let accepted = local.accept_as_is();
            (local, accepted)
        })
        .await
        .map_err(|e| FollowError::Panicked(e.to_string()))?;
        self.local = Some(local);
        accepted
    }

    /// Follows the primary's stream until it ends, then catches up from the replica (what
    /// the stream no longer reaches, or everything while the primary is away).
    async fn follow_stream(&mut self, primary: &PrimaryUrl) -> Result<(), FollowError> {
        if self.position.applying.is_some() {
            // Killed mid-transaction: the replica's files settle it first.
            return self.poll().await;
        }
        let mut stream = match StreamConnection::open(primary, self.position.txid).await {
            Ok(stream) => stream,
            Err(why) => {
                if self.status.borrow().connected || self.status.borrow().streamed == 0 {
                    tracing::warn!(db = %self.path.display(), %why, "the primary cannot be reached: following the replica meanwhile");
                }
                self.status.send_modify(|s| s.connected = false);
                return self.poll().await;
            }
        };
        self.status.send_modify(|s| s.connected = true);
        let streamed = self.status.borrow().streamed;
        let ended = self.read_stream(&mut stream).await;
        self.status.send_modify(|s| s.connected = false);
        self.reconnect_soon = self.status.borrow().streamed > streamed;
        match ended {
            Ok(PRIMARY_BEHIND) => {
                tracing::info!(db = %self.path.display(), "the primary is behind this database: checking the replica's history");
                let step = self.check_whole_replica().await?;
                return self.take(step).await;
            }
            Ok(why) => tracing::debug!(db = %self.path.display(), why, "the stream ended"),
            Err(FollowError::Stream(why)) => {
                tracing::info!(db = %self.path.display(), %why, "the stream ended: catching up from the replica");
            }
            Err(e) => return Err(e),
        }
        self.poll().await
    }

    /// Applies what the stream brings until it ends (`Ok` with why: a gap, the end, a
    /// stop) or breaks (`FollowError::Stream`).
    async fn read_stream(
        &mut self,
        stream: &mut StreamConnection,
    ) -> Result<&'static str, FollowError> {
        loop {
            let head = tokio::select! {
                head = stream.next_head() => head.map_err(FollowError::Stream)?,
                _ = self.stopped.changed() => return Ok("stopped"),
            };
            match head {
                None => return Ok("the primary ended it"),
                Some(Head::Gap) => return Ok("it no longer reaches back to this database"),
                Some(Head::Heartbeat { staged, uploaded }) => {
                    if staged < self.position.txid {
                        return Ok(PRIMARY_BEHIND);
                    }
                    self.seen(Some(staged));
                    self.status.send_modify(|s| s.uploaded = uploaded);
                }
                Some(Head::File { range, len }) => {
                    let at = self.position.txid;
                    let continues = range.min == at.next();
                    // A full copy that starts a history again holds the whole database.
                    let restarts = range.min == Txid::ONE && range.max > at;
                    if !continues && !restarts {
                        return Err(FollowError::Stream(format!(
                            "the primary sent {range}, which does not continue TXID {at}"
                        )));
                    }
                    let history = if restarts { 0 } else { self.position.history };
                    // Here whole already (a follower that fell behind has several): one
                    // transaction for all of them.
                    let whole = stream.take_whole_files(range, len, BATCH_MAX);
                    let newest = whole
                        .as_ref()
                        .and_then(|files| files.last())
                        .map_or(range.max, |(last, _)| last.max);
                    self.seen(Some(newest));
                    let applied = match whole {
                        Some(files) => self.apply_received(files, history).await,
                        None => self.apply_streamed(range, len, stream, history).await,
                    };
                    match applied {
                        Err(FollowError::HistoryChanged { .. }) => {
                            // The stream stopped mid-file: it ends here.
                            self.rebuild(format!("{range} from the primary is of another history"))
                                .await?;
                            return Ok("rebuilt from the replica");
                        }
                        other => other?,
                    }
                }
            }
        }
    }

    /// Looks for new files once and applies them. A file of another history than the
    /// database's means the source's history was replaced: the database is rebuilt.
    async fn poll(&mut self) -> Result<(), FollowError> {
        let step = self.next_step().await?;
        self.take(step).await
    }

    /// Applies what `step` says (see [`Run::poll`]).
    async fn take(&mut self, step: Step) -> Result<(), FollowError> {
        let history = self.position.history;
        let applied = match step {
            Step::Nothing => Ok(()),
            Step::Each(files) => {
                let mut applied = Ok(());
                for file in files {
                    if *self.stopped.borrow() {
                        break;
                    }
                    applied = self.apply(vec![file], history).await;
                    if applied.is_err() {
                        break;
                    }
                }
                applied
            }
            Step::All(files) => self.apply(files, history).await,
            Step::Rebuild(why) => return self.rebuild(why).await,
            // Killed while applying a file from the primary's stream that the replica does
            // not hold yet: the database holds the position or that TXID, both committed
            // states of the primary; the replica catches up, or the stream settles it.
            Step::Short { .. } if self.primary.is_some() => return Ok(()),
            Step::Short { reached, reach } => {
                return self
                    .rebuild(format!(
                        "the replica reaches TXID {reached}, below the {reach} the database may hold"
                    ))
                    .await;
            }
        };
        match applied {
            Err(FollowError::HistoryChanged {
                expected,
                found,
                file,
            }) => {
                self.rebuild(format!(
                    "the replica's history was replaced: {file} is of history {found:016x}, the database of {expected:016x}"
                ))
                .await
            }
            other => other,
        }
    }

    /// What to apply next, from one listing of L0 (and of the whole replica when L0 no
    /// longer continues the position, or every `check_every` idle polls).
    async fn next_step(&mut self) -> Result<Step, FollowError> {
        let at = self.position.txid;
        let l0 = listed(&self.replica, self.replica.list(Level::L0, at.next())).await?;
        let mut next = at.next();
        let mut each = Vec::new();
        for f in &l0 {
            if f.range.min != next {
                break;
            }
            next = f.range.max.next();
            each.push(f.clone());
        }
        self.seen(l0.iter().map(|f| f.range.max).max());
        if let Some(applying) = self.position.applying {
            // Killed while applying: the database is at the position or at `applying`;
            // one transaction that reaches past both leaves it right either way.
            if each.last().is_some_and(|f| f.range.max >= applying) {
                return Ok(Step::All(each));
            }
            return self.plan_from_position(Some(applying)).await;
        }
        if !each.is_empty() {
            self.idle_polls = 0;
            return Ok(Step::Each(each));
        }
        if !l0.is_empty() {
            // L0 goes on beyond the position, but not from it.
            return self.plan_from_position(None).await;
        }
        self.idle_polls += 1;
        if self.idle_polls < self.options.check_every.max(1) {
            return Ok(Step::Nothing);
        }
        self.idle_polls = 0;
        self.check_whole_replica().await
    }

    /// Lists the whole replica: newer files in higher levels are caught up with; a newest
    /// TXID below the position, or the position's TXID in another history, is a replaced
    /// history.
    async fn check_whole_replica(&mut self) -> Result<Step, FollowError> {
        let files = listed(&self.replica, self.replica.list_all()).await?;
        let Some(newest) = files.iter().max_by_key(|f| (f.range.max, f.range.min)) else {
            return Ok(Step::Rebuild("the replica is empty".to_owned()));
        };
        let at = self.position.txid;
        self.seen(Some(newest.range.max));
        if newest.range.max < at {
            if self.behind_the_stream(newest).await? {
                return Ok(Step::Nothing);
            }
            return Ok(Step::Rebuild(format!(
                "the replica's newest TXID is {}, below the database's {at}",
                newest.range.max
            )));
        }
        if newest.range.max == at {
            let found = self.replica.read_header(newest).await?.node_id;
            let ours = self.position.history;
            if found != 0 && ours != 0 && found != ours {
                return Ok(Step::Rebuild(format!(
                    "{newest} is of history {found:016x}, the database of {ours:016x}"
                )));
            }
            return Ok(Step::Nothing);
        }
        self.plan_in(&files, None)
    }

    /// Whether the replica, whose newest file is `newest`, is only behind what the primary's
    /// stream brought: uploads are batched, so a follower of the stream is often ahead of
    /// the replica, and one whose primary went away must keep the committed state it holds
    /// rather than go back to the replica's. A file of the same history says so; another
    /// history (or none recorded) is a replaced one.
    async fn behind_the_stream(&mut self, newest: &FileInfo) -> Result<bool, FollowError> {
        if self.primary.is_none() || self.position.history == 0 {
            return Ok(false);
        }
        Ok(self.replica.read_header(newest).await?.node_id == self.position.history)
    }

    async fn plan_from_position(&mut self, reach: Option<Txid>) -> Result<Step, FollowError> {
        let files = listed(&self.replica, self.replica.list_all()).await?;
        self.seen(files.iter().map(|f| f.range.max).max());
        self.plan_in(&files, reach)
    }

    /// The fewest files from the position to the newest TXID (at least `reach`), as one
    /// transaction; a rebuild if no chain of this history gets there.
    fn plan_in(&self, files: &[FileInfo], reach: Option<Txid>) -> Result<Step, FollowError> {
        match plan_files(files, self.position.txid, None, &[]) {
            Ok(plan) if reach.is_none_or(|r| plan.txid >= r) => Ok(Step::All(plan.files)),
            Ok(plan) => Ok(Step::Short {
                reached: plan.txid,
                reach: reach.unwrap_or_default(),
            }),
            Err(PlanError::Empty) => Ok(Step::Rebuild("the replica is empty".to_owned())),
            // No chain of files from the position: the newest snapshot and what follows.
            Err(e @ PlanError::Gap { .. }) | Err(e @ PlanError::NoSnapshot { .. }) => {
                Ok(Step::Rebuild(format!(
                    "no chain of files from TXID {}: {e}",
                    self.position.txid
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Rebuilds the database from the replica's newest state, as one transaction.
    async fn rebuild(&mut self, why: String) -> Result<(), FollowError> {
        tracing::warn!(db = %self.path.display(), reason = %why, "rebuilding the database from the replica's newest state");
        let files = listed(&self.replica, self.replica.list_all()).await?;
        let plan = plan_files(&files, Txid::ZERO, None, &[])?;
        // What was seen of an older history says nothing of this one.
        self.position.newest = Txid::ZERO;
        self.apply(plan.files, 0).await?;
        self.status.send_modify(|s| {
            s.rebuilds += 1;
            s.newest = s.txid;
        });
        Ok(())
    }

    /// Records the newest TXID seen in the source.
    fn seen(&mut self, newest: Option<Txid>) {
        if let Some(newest) = newest.filter(|n| *n > self.position.newest) {
            self.position.newest = newest;
            self.status.send_modify(|s| s.newest = newest);
        }
    }

    /// Applies `files` of the replica as one transaction (see [`Run::commit`]).
    async fn apply(&mut self, files: Vec<FileInfo>, history: u64) -> Result<(), FollowError> {
        let Some(last) = files.last() else {
            return Ok(());
        };
        let target = last.range.max;
        let replica = self.replica.clone();
        let inputs = move || -> Vec<Input> {
            files
                .into_iter()
                .map(|f| {
                    let name = f.to_string();
                    let reader: Box<dyn BufRead + Send> =
                        Box::new(ChunkedReader::new(replica.clone(), f, CHUNK));
                    (name, reader)
                })
                .collect()
        };
        self.commit(target, history, inputs, std::future::ready(Ok(())))
            .await?;
        self.status.send_modify(|s| s.from_replica += 1);
        Ok(())
    }

    /// Applies `files`, received whole and continuing one another, as one transaction.
    async fn apply_received(
        &mut self,
        files: Vec<(TxidRange, Bytes)>,
        history: u64,
    ) -> Result<(), FollowError> {
        let target = files.last().expect("one").0.max;
        let count = files.len() as u64;
        let inputs = move || -> Vec<Input> {
            files
                .into_iter()
                .map(|(range, bytes)| -> Input {
                    (
                        format!("{range} from the primary"),
                        Box::new(std::io::Cursor::new(bytes)),
                    )
                })
                .collect()
        };
        self.commit(target, history, inputs, async { Ok(()) })
            .await?;
        self.status.send_modify(|s| s.streamed += count);
        Ok(())
    }

    /// Applies the file of `range` arriving on `stream` (`len` bytes) as one transaction,
    /// handing its bytes to the applying thread as they arrive.
    async fn apply_streamed(
        &mut self,
        range: TxidRange,
        len: u64,
        stream: &mut StreamConnection,
        history: u64,
    ) -> Result<(), FollowError> {
        let (tx, rx) = mpsc::channel(4);
        let name = format!("{range} from the primary");
        let inputs = move || -> Vec<Input> {
            let reader: Box<dyn BufRead + Send> = Box::new(ChannelReader::new(rx));
            vec![(name, reader)]
        };
        let pump = async move {
            let passed = stream.pass_file(len, &tx).await;
            drop(tx);
            passed
        };
        self.commit(range.max, history, inputs, pump).await?;
        self.status.send_modify(|s| s.streamed += 1);
        Ok(())
    }

    /// Applies what `inputs` makes as one transaction: announced in the position first,
    /// applied on a blocking thread while `feeding` runs (it brings a streamed file's bytes),
    /// recorded in the position after.
    async fn commit(
        &mut self,
        target: Txid,
        history: u64,
        inputs: impl FnOnce() -> Vec<Input> + Send + 'static,
        feeding: impl Future<Output = Result<(), String>>,
    ) -> Result<(), FollowError> {
        let position_error = |error| FollowError::Position {
            path: position::path_for(&self.path),
            error,
        };
        let announced = Position {
            applying: Some(self.position.applying.map_or(target, |a| a.max(target))),
            ..self.position
        };
        announced.save(&self.path).map_err(position_error)?;
        self.position = announced;

        let mut local = self
            .local
            .take()
            .ok_or_else(|| FollowError::Panicked("the local database is lent out".to_owned()))?;
        let handle = tokio::runtime::Handle::current();
        let applying = tokio::task::spawn_blocking(move || {
            let _runtime = handle.enter();
            let mut history = history;
            let inputs = inputs()
                .into_iter()
                .map(|(name, reader)| (name, Ok::<_, FollowError>(reader)));
            let header = local.apply(inputs, &mut history).and_then(|header| {
                let fingerprint = local.fingerprint()?;
                Ok(header.map(|h| (h, fingerprint)))
            });
            (local, header, history)
        });
        let (applied, fed) = tokio::join!(applying, feeding);
        let (local, header, history) = applied.map_err(|e| FollowError::Panicked(e.to_string()))?;
        self.local = Some(local);
        let (header, fingerprint) = match (header, fed) {
            (Ok(Some(done)), _) => done,
            (Ok(None), _) => return Ok(()),
            // A stream that broke shows as a truncated file; say why it broke.
            (Err(FollowError::Corrupt { .. }), Err(why)) => return Err(FollowError::Stream(why)),
            (Err(e), _) => return Err(e),
        };
        let done = Position {
            txid: target,
            history,
            applying: None,
            newest: self.position.newest.max(target),
            fingerprint: Some(fingerprint),
            ..self.position
        };
        done.save(&self.path).map_err(position_error)?;
        self.position = done;
        let committed = jiff::Timestamp::from_millisecond(header.timestamp).ok();
        self.status.send_modify(|s| {
            s.txid = target;
            s.history = history;
            s.newest = s.newest.max(target);
            s.committed = committed;
        });
        Ok(())
    }
}
