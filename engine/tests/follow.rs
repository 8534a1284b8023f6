//! Following a replica (`strata restore -f` and the embedded follower): a local database
//! kept at the replica's newest TXID while other processes read it. Every read transaction
//! sees a state the source passed through; killed, stopped past L0 retention, or with the
//! replica's history replaced, the follower ends equal to the source, and never applies one
//! history's files over another's.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::capture::*;
use common::free_port;
use ltx::Txid;
use strata::follow::{FollowOptions, Follower};

/// Kills the processes given to it when the test ends, however it ends: a failed assertion
/// must not leave a follower polling for ever.
#[derive(Default)]
struct Reaper(Vec<u32>);

impl Reaper {
    fn watch(&mut self, child: &Child) {
        self.0.push(child.id());
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = Command::new("kill")
                .args(["-9", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// `strata restore -f` into `out`, polling every 100 ms; its output appended to
/// `follow.log`.
fn spawn_follower(setup: &Setup, out: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(setup.dir.join("follow.log"))
        .unwrap();
    Command::new(strata_bin())
        .args(["restore", "-f", "--follow-interval", "100ms", "-o"])
        .arg(out)
        .arg(&setup.replica_url)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// `workload.py read`: read transactions on `out` for `seconds`, each checked against the
/// states the source passed through.
fn spawn_reader(setup: &Setup, out: &Path, seconds: f64) -> Child {
    Command::new("python3")
        .arg(WORKLOAD)
        .arg("read")
        .arg(out)
        .arg(&setup.states)
        .args(["--seconds", &seconds.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for the writers, then for the reader, which must have read and found nothing wrong.
async fn writers_then_reader(writers: Vec<Child>, reader: Child) {
    tokio::task::spawn_blocking(move || wait_all(writers))
        .await
        .unwrap();
    let read = finished(reader).await;
    assert!(read.status.success(), "the reader: {}", said(&read));
    assert!(said(&read).contains("reads"), "{}", said(&read));
}

/// A child process's output once it has exited, waited for off the runtime's threads.
async fn finished(child: Child) -> std::process::Output {
    tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap()
}

/// What a reader said, for a failure message.
fn said(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The last state the source recorded.
fn last_state(setup: &Setup) -> String {
    std::fs::read_to_string(&setup.states)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned()
}

/// Waits until the database at `out` holds the source's last state.
fn wait_equal(setup: &Setup, out: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let want = last_state(setup);
    loop {
        let got = python(&["hash", out.to_str().unwrap()]);
        if got.trim() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the follower never reached the source's last state; follower log:\n{}\nstrata log:\n{}",
            std::fs::read_to_string(setup.dir.join("follow.log")).unwrap_or_default(),
            setup.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn options() -> FollowOptions {
    let mut o = FollowOptions::default();
    o.interval = Duration::from_millis(100);
    o.check_every = 3;
    o
}

/// A follower process killed with SIGKILL and started again goes on from its position;
/// a reader reading all along sees only states the source had; the end equals the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_of_a_follower_see_only_states_the_source_had_through_a_kill() {
    let setup = Setup::new(None);
    let strata = setup.strata();
    let out = setup.dir.join("follow.db");
    let mut reaper = Reaper::default();
    let mut follower = spawn_follower(&setup, &out);
    reaper.watch(&follower);
    let reader = spawn_reader(&setup, &out, 14.0);
    let writers = setup.writers(2, 10.0);
    tokio::time::sleep(Duration::from_secs(4)).await;
    follower.kill().unwrap();
    follower.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut follower = spawn_follower(&setup, &out);
    reaper.watch(&follower);
    writers_then_reader(writers, reader).await;
    wait_equal(&setup, &out, "after the writers stopped");
    let log = std::fs::read_to_string(setup.dir.join("follow.log")).unwrap();
    assert_eq!(log.matches("(restored)").count(), 1, "{log}");
    assert_eq!(log.matches("(its saved position)").count(), 1, "{log}");
    sqlite3_dump(out.to_str().unwrap());
    signal(&follower, "-TERM");
    assert!(follower.wait().unwrap().success());
    stop(&setup, strata);
}

/// Litestream 0.5.17 writes the replica (compacting into L1, L2 and snapshots, L0 kept
/// 3 s) and a `strata restore -f` follower polls it: a reader sees only states the source
/// had, and the end equals the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_of_a_replica_litestream_writes_sees_only_states_the_source_had() {
    let setup = Setup::new(None);
    let mut reaper = Reaper::default();
    let litestream = litestream_replicate(&setup);
    reaper.watch(&litestream);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !setup.dir.join("replica").exists()
        || setup
            .replica()
            .list_all()
            .await
            .unwrap_or_default()
            .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "Litestream wrote nothing: {}",
            std::fs::read_to_string(setup.dir.join("litestream.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = setup.dir.join("follow.db");
    let follower = spawn_follower(&setup, &out);
    reaper.watch(&follower);
    let reader = spawn_reader(&setup, &out, 16.0);
    let writers = setup.writers(2, 14.0);
    writers_then_reader(writers, reader).await;
    let levels: std::collections::BTreeSet<u8> = setup
        .replica()
        .list_all()
        .await
        .unwrap()
        .iter()
        .map(|f| f.level.get())
        .collect();
    assert!(
        levels.len() > 1,
        "Litestream compacted nothing while followed: levels {levels:?}"
    );
    wait_equal(&setup, &out, "after the writers stopped");
    sqlite3_dump(out.to_str().unwrap());
    for mut child in [follower, litestream] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Stopped while L0 retention removes the files after its position, a follower catches up
/// from the higher levels (or a snapshot) as one transaction; a reader sees only states
/// the source had.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_follower_stopped_past_l0_retention_catches_up() {
    let setup = Setup::new(None);
    let replication = start_in_process(&setup, &setup.replica_url).await;
    let out = setup.dir.join("follow.db");
    setup.write_for(2, 3.0).await;
    replication.sync().await.unwrap();
    let follower = Follower::start(setup.replica(), &out, false, options())
        .await
        .unwrap();
    let first = follower.status();
    assert!(first.txid > Txid::ZERO);
    follower.stop().await.unwrap();

    let reader = spawn_reader(&setup, &out, 12.0);
    setup.write_for(2, 8.0).await;
    let synced = replication.sync().await.unwrap();
    let l0 = setup
        .replica()
        .list(strata::storage::Level::L0, Txid::ZERO)
        .await
        .unwrap();
    assert!(
        l0.first().is_some_and(|f| f.range.min > first.txid.next()),
        "retention has not removed the L0 files after the follower's TXID {}: {l0:?}",
        first.txid
    );
    let follower = Follower::start(setup.replica(), &out, false, options())
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), follower.wait_for(synced))
        .await
        .expect("the follower catches up")
        .unwrap();
    assert!(status.error.is_none(), "{status:?}");
    wait_equal(&setup, &out, "after catching up");
    let read = finished(reader).await;
    assert!(read.status.success(), "the reader: {}", said(&read));
    follower.stop().await.unwrap();
    replication.stop().await.unwrap();
}

/// A replica wiped and written again from another database (another history, TXIDs from
/// 1 again) is noticed and the follower's database rebuilt from it, as one transaction:
/// it ends equal to the new source, never a mix of the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_replaced_history_is_rebuilt_never_joined() {
    let first = Setup::new(None);
    let url = first.replica_url.clone();
    let replication = start_in_process(&first, &url).await;
    first.write_for(1, 4.0).await;
    let reached = replication.sync().await.unwrap();
    let out = first.dir.join("follow.db");
    let follower = Follower::start(first.replica(), &out, false, options())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), follower.wait_for(reached))
        .await
        .expect("the follower reaches the first source")
        .unwrap();
    wait_equal(&first, &out, "the first source");
    replication.stop().await.unwrap();

    // Another database replicates into the same place, after the old files are gone.
    let replica_dir = PathBuf::from(url.strip_prefix("file://").unwrap());
    std::fs::remove_dir_all(&replica_dir).unwrap();
    let second = Setup::new(Some(url.clone()));
    let replication = start_in_process(&second, &url).await;
    second.write_for(1, 2.0).await;
    replication.sync().await.unwrap();
    wait_equal(&second, &out, "the second source");
    let status = follower.status();
    assert!(status.rebuilds >= 1, "{status:?}");
    sqlite3_dump(out.to_str().unwrap());
    follower.stop().await.unwrap();
    replication.stop().await.unwrap();
}

/// A follower killed between announcing a transaction and recording it leaves the
/// database at one of two TXIDs; started again it reaches past both in one transaction.
/// Both cases, made by editing the position file as the kill would have left it.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_follower_killed_mid_transaction_ends_right_either_way() {
    let setup = Setup::new(None);
    let replication = start_in_process(&setup, &setup.replica_url).await;
    let out = setup.dir.join("follow.db");
    let position = {
        let mut p = out.as_os_str().to_owned();
        p.push("-follow");
        PathBuf::from(p)
    };
    for case in ["committed", "not committed"] {
        setup.write_for(1, 1.5).await;
        let synced = replication.sync().await.unwrap();
        let follower = Follower::start(setup.replica(), &out, false, options())
            .await
            .unwrap();
        let at = follower.wait_for(synced).await.unwrap().txid;
        follower.stop().await.unwrap();
        let text = std::fs::read_to_string(&position).unwrap();
        assert!(text.contains(&format!("txid={at}")), "{text}");
        setup.write_for(1, 1.5).await;
        let newest = replication.sync().await.unwrap();
        let edited = match case {
            // The database holds `at`; the position says an earlier TXID, announcing `at`.
            "committed" => text.replace(
                &format!("txid={at}"),
                &format!("txid={}\napplying={at}", Txid::new(at.get() - 1)),
            ),
            // The database holds `at`; the transaction to `newest` never committed.
            _ => format!("{text}applying={newest}\n"),
        };
        std::fs::write(&position, edited).unwrap();
        let follower = Follower::start(setup.replica(), &out, false, options())
            .await
            .unwrap();
        follower.wait_for(newest).await.unwrap();
        wait_equal(&setup, &out, case);
        follower.stop().await.unwrap();
        let text = std::fs::read_to_string(&position).unwrap();
        assert!(!text.contains("applying"), "{case}: {text}");
    }
    replication.stop().await.unwrap();
}

/// A database that is there but was not made by a follower is refused, naming the way out.
#[tokio::test]
async fn a_database_not_made_by_a_follower_is_refused() {
    let setup = Setup::new(None);
    let replication = start_in_process(&setup, &setup.replica_url).await;
    replication.sync().await.unwrap();
    let err = Follower::start(setup.replica(), &setup.db, false, options())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
    replication.stop().await.unwrap();
}

/// A port free on loopback now.
/// `strata replicate --config` serving followers' streams on `addr`, its output appended to
/// `strata.log`, once it says it is replicating.
fn spawn_primary(setup: &Setup, addr: &str) -> Child {
    spawn_primary_with(setup, addr, &[])
}

/// [`spawn_primary`] with more `strata replicate` flags.
fn spawn_primary_with(setup: &Setup, addr: &str, flags: &[&str]) -> Child {
    let started = setup.log().matches("replicating ").count();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(setup.dir.join("strata.log"))
        .unwrap();
    let mut child = Command::new(strata_bin())
        .args(["replicate", "--config"])
        .arg(setup.config())
        .args(["--addr", addr])
        .args(flags)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while setup.log().matches("replicating ").count() == started {
        assert!(
            Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "{}",
            setup.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// A follower of a primary's live stream gets its files from the stream; with the primary
/// killed (SIGKILL) and started again it follows the replica meanwhile and reconnects;
/// a reader sees only states the source had, and the end equals the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_of_a_primary_stream_outlives_the_primary() {
    let setup = Setup::new(None);
    let addr = format!("127.0.0.1:{}", free_port());
    let mut reaper = Reaper::default();
    let mut primary = spawn_primary(&setup, &addr);
    reaper.watch(&primary);
    let out = setup.dir.join("follow.db");
    let log = std::fs::File::create(setup.dir.join("follow.log")).unwrap();
    let follower = Command::new(strata_bin())
        .args(["restore", "-f", "--follow-interval", "200ms", "-o"])
        .arg(&out)
        .arg(format!("http://{addr}/app.db"))
        .args(["--replica", &setup.replica_url])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    reaper.watch(&follower);
    let reader = spawn_reader(&setup, &out, 16.0);
    let writers = setup.writers(2, 10.0);
    tokio::time::sleep(Duration::from_secs(4)).await;
    primary.kill().unwrap();
    primary.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let primary = spawn_primary(&setup, &addr);
    reaper.watch(&primary);
    tokio::task::spawn_blocking(move || wait_all(writers))
        .await
        .unwrap();
    let read = finished(reader).await;
    assert!(read.status.success(), "the reader: {}", said(&read));
    wait_equal(&setup, &out, "following the primary");
    signal(&follower, "-TERM");
    let status = finished(follower).await;
    assert!(status.status.success());
    let log = std::fs::read_to_string(setup.dir.join("follow.log")).unwrap();
    let streamed: u64 = log
        .split(" files from the primary's stream")
        .next()
        .and_then(|s| s.rsplit('(').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count of streamed files in:\n{log}"));
    assert!(streamed > 10, "{streamed} files came by the stream:\n{log}");
    stop(&setup, primary);
}

/// A follower of the stream is ahead of the replica while uploads wait for their interval
/// (30 s here). With the primary killed it follows the replica, which is behind in the same
/// history, not another history: it keeps the committed state it holds (its readers never
/// see commits go away) and goes on once the primary is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_follower_ahead_of_the_replica_keeps_its_state_when_the_primary_dies() {
    let setup = Setup::new(None);
    let addr = format!("127.0.0.1:{}", free_port());
    let mut reaper = Reaper::default();
    let mut primary = spawn_primary_with(&setup, &addr, &["--sync-interval", "30s"]);
    reaper.watch(&primary);
    let out = setup.dir.join("follow.db");
    let follower = spawn_stream_follower(&setup, &addr, &out);
    reaper.watch(&follower);
    setup.write_for(1, 1.0).await;
    wait_equal(&setup, &out, "the stream's follower");
    let held = python(&["hash", out.to_str().unwrap()]);
    primary.kill().unwrap();
    primary.wait().unwrap();
    // The follower polls the replica meanwhile (every 200 ms, all of it every few polls).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let log = || std::fs::read_to_string(setup.dir.join("stream.log")).unwrap_or_default();
    assert_eq!(
        python(&["hash", out.to_str().unwrap()]),
        held,
        "the follower went back to the replica's state:\n{}",
        log()
    );
    assert!(!log().contains("rebuilding"), "{}", log());
    let primary = spawn_primary(&setup, &addr);
    reaper.watch(&primary);
    setup.write_for(1, 1.0).await;
    wait_equal(&setup, &out, "after the primary came back");
    signal(&follower, "-TERM");
    assert!(finished(follower).await.status.success());
    stop(&setup, primary);
}

/// A primary whose history was replaced by one that has not reached the follower's TXID
/// yet (another, younger database under the same name, into the same replica emptied
/// first): the follower of its stream does not wait for that TXID but rebuilds from the
/// new history at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_follower_rebuilds_from_a_new_history_below_its_txid() {
    let first = Setup::new(None);
    let addr = format!("127.0.0.1:{}", free_port());
    let mut reaper = Reaper::default();
    let primary = spawn_primary(&first, &addr);
    reaper.watch(&primary);
    let out = first.dir.join("follow.db");
    let follower = spawn_stream_follower(&first, &addr, &out);
    reaper.watch(&follower);
    first.write_for(1, 3.0).await;
    wait_equal(&first, &out, "the first source");
    stop(&first, primary);

    let url = first.replica_url.clone();
    std::fs::remove_dir_all(url.strip_prefix("file://").unwrap()).unwrap();
    let second = Setup::new(Some(url));
    let primary = spawn_primary(&second, &addr);
    reaper.watch(&primary);
    second.write_for(1, 0.2).await;
    wait_equal(&second, &out, "the second source");
    let log = std::fs::read_to_string(first.dir.join("stream.log")).unwrap();
    assert!(log.contains("rebuilding"), "{log}");
    signal(&follower, "-TERM");
    assert!(finished(follower).await.status.success());
    stop(&second, primary);
}

/// Waits until `follower` has rebuilt its database at least once and holds `txid`.
async fn rebuilt_and_at(follower: &Follower, txid: Txid) {
    let mut watch = follower.watch();
    let waited = tokio::time::timeout(
        Duration::from_secs(30),
        watch.wait_for(|s| s.rebuilds >= 1 && s.txid >= txid || s.stopped),
    )
    .await;
    let status = follower.status();
    assert!(
        waited.is_ok() && status.rebuilds >= 1 && status.txid >= txid,
        "expected a rebuild and TXID {txid}: {status:?}"
    );
}

/// A follower's database written by another connection, or replaced while the follower
/// was stopped, is not what its position says: the follower rebuilds it from the replica
/// (never applying later files over it); replaced while it runs, it stops and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_database_written_or_replaced_under_a_follower_is_rebuilt() {
    let setup = Setup::new(None);
    let replication = start_in_process(&setup, &setup.replica_url).await;
    let out = setup.dir.join("follow.db");
    setup.write_for(1, 1.0).await;
    let synced = replication.sync().await.unwrap();
    let follower = Follower::start(setup.replica(), &out, false, options())
        .await
        .unwrap();
    follower.wait_for(synced).await.unwrap();

    // Written by another connection while followed.
    rusqlite::Connection::open(&out)
        .unwrap()
        .execute_batch("DELETE FROM items WHERE id % 3 = 0")
        .unwrap();
    setup.write_for(1, 1.0).await;
    let synced = replication.sync().await.unwrap();
    rebuilt_and_at(&follower, synced).await;
    wait_equal(&setup, &out, "after a foreign write");
    follower.stop().await.unwrap();

    // Replaced while stopped: another database under the same name, position kept.
    let other = Setup::new(None);
    std::fs::copy(&other.db, &out).unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", out.display()));
    }
    setup.write_for(1, 1.0).await;
    let synced = replication.sync().await.unwrap();
    let follower = Follower::start(setup.replica(), &out, false, options())
        .await
        .unwrap();
    rebuilt_and_at(&follower, synced).await;
    wait_equal(&setup, &out, "after the database was replaced");

    // Replaced while followed: the follower stops, naming it, at its next transaction.
    std::fs::copy(&other.db, setup.dir.join("swap.db")).unwrap();
    std::fs::rename(setup.dir.join("swap.db"), &out).unwrap();
    setup.write_for(1, 1.0).await;
    replication.sync().await.unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(20), follower.join())
        .await
        .expect("the follower stops");
    let err = stopped.unwrap_err();
    assert!(err.to_string().contains("replaced"), "{err}");
    replication.stop().await.unwrap();
}

/// A plain restore into a database a follower keeps is refused while it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_over_a_followed_database_is_refused() {
    let setup = Setup::new(None);
    let replication = start_in_process(&setup, &setup.replica_url).await;
    replication.sync().await.unwrap();
    let out = setup.dir.join("follow.db");
    let follower = Follower::start(setup.replica(), &out, false, options())
        .await
        .unwrap();
    let restore = Command::new(strata_bin())
        .args(["restore", "--force", "-o"])
        .arg(&out)
        .arg(&setup.replica_url)
        .output()
        .unwrap();
    assert!(!restore.status.success());
    let said = String::from_utf8_lossy(&restore.stderr);
    assert!(said.contains("a follower is keeping"), "{said}");
    follower.stop().await.unwrap();
    replication.stop().await.unwrap();
}

/// `GET path` on `addr`: the response body, if it answered 200.
fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// `restore -f --addr` serves the follower's TXID and lag as text and as metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_shows_its_txid_and_lag_over_http() {
    let setup = Setup::new(None);
    let replication = start_in_process(&setup, &setup.replica_url).await;
    setup.write_for(1, 1.0).await;
    let synced = replication.sync().await.unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut reaper = Reaper::default();
    let mut follower = Command::new(strata_bin())
        .args([
            "restore",
            "-f",
            "--follow-interval",
            "100ms",
            "--addr",
            &addr,
            "-o",
        ])
        .arg(setup.dir.join("follow.db"))
        .arg(&setup.replica_url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    reaper.watch(&follower);
    let want = format!("txid: {synced}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(body) = http_get(&addr, "/status")
            && body.contains(&want)
        {
            break body;
        }
        assert!(Instant::now() < deadline, "no {want} in /status");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.contains("lag: 0 TXIDs"), "{status}");
    let metrics = http_get(&addr, "/metrics").unwrap();
    assert!(
        metrics.contains("strata_follow_txid{db=") && metrics.ends_with("# EOF\n"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("strata_follow_txid{")
                && l.ends_with(&format!(" {}", synced.get()))),
        "{metrics}"
    );
    signal(&follower, "-TERM");
    assert!(follower.wait().unwrap().success());
    replication.stop().await.unwrap();
}

/// `strata restore -f` of the primary's stream through `proxy`, catching up from the
/// replica; its output appended to `stream.log`.
fn spawn_stream_follower(setup: &Setup, proxy: &str, out: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(setup.dir.join("stream.log"))
        .unwrap();
    Command::new(strata_bin())
        .args(["restore", "-f", "--follow-interval", "200ms", "-o"])
        .arg(out)
        .arg(format!("http://{proxy}/app.db"))
        .args(["--replica", &setup.replica_url])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// A follower's position file: (history, TXID), if it has one yet.
fn follow_position(out: &Path) -> Option<(String, u64)> {
    let mut name = out.file_name()?.to_owned();
    name.push("-follow");
    let text = std::fs::read_to_string(out.with_file_name(name)).ok()?;
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_owned)
    };
    let txid = u64::from_str_radix(&field("txid")?, 16).ok()?;
    Some((field("history")?, txid))
}

/// The live-replication campaign: a primary with two writers, a follower of its stream
/// through a misbehaving proxy and a follower polling the replica, each read all along.
/// At random (seeded): `kill -9` of the primary's strata and of either follower, the proxy
/// stalling, cutting connections mid-file or refusing them, and the primary's staged files
/// pruned (a follower then catches up from object storage); compaction and retention run on
/// short intervals. Every read sees a state the primary committed, a follower's TXID never
/// goes back within a history, and at the end both equal the source.
/// `STRATA_FOLLOW_SEED=N` replays a run (a failure prints its seed and events);
/// `STRATA_FOLLOW_SECONDS=S` makes it longer (CI: 20 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_campaign_of_kills_and_network_faults_shows_followers_only_committed_states() {
    let seed: u64 = std::env::var("STRATA_FOLLOW_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let seconds: f64 = std::env::var("STRATA_FOLLOW_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20.0);
    eprintln!("follow campaign: STRATA_FOLLOW_SEED={seed}");
    let mut rng = common::Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let setup = Setup::new(None);
    let addr = format!("127.0.0.1:{}", free_port());
    let mut reaper = Reaper::default();
    let mut primary = spawn_primary(&setup, &addr);
    reaper.watch(&primary);
    let proxy = common::ChaosProxy::start(&addr);
    let (stream_db, poll_db) = (setup.dir.join("stream.db"), setup.dir.join("poll.db"));
    let mut stream = spawn_stream_follower(&setup, &proxy.addr(), &stream_db);
    reaper.watch(&stream);
    let mut poll = spawn_follower(&setup, &poll_db);
    reaper.watch(&poll);
    let readers = [
        spawn_reader(&setup, &stream_db, seconds + 10.0),
        spawn_reader(&setup, &poll_db, seconds + 10.0),
    ];
    let writers = setup.writers(2, seconds);
    let staged = setup.dir.join(".app.db-strata").join("ltx").join("0");
    let mut events = Vec::new();
    let mut seen: [Option<(String, u64)>; 2] = [None, None];
    let started = Instant::now();
    while started.elapsed().as_secs_f64() < seconds {
        tokio::time::sleep(Duration::from_millis(300 + rng.below(1200))).await;
        let event = match rng.below(7) {
            0 => {
                primary.kill().unwrap();
                primary.wait().unwrap();
                tokio::time::sleep(Duration::from_millis(rng.below(1000))).await;
                primary = spawn_primary(&setup, &addr);
                reaper.watch(&primary);
                "kill -9 the primary".to_owned()
            }
            1 => {
                stream.kill().unwrap();
                stream.wait().unwrap();
                stream = spawn_stream_follower(&setup, &proxy.addr(), &stream_db);
                reaper.watch(&stream);
                "kill -9 the stream's follower".to_owned()
            }
            2 => {
                poll.kill().unwrap();
                poll.wait().unwrap();
                poll = spawn_follower(&setup, &poll_db);
                reaper.watch(&poll);
                "kill -9 the polling follower".to_owned()
            }
            3 => {
                let ms = 200 + rng.below(2800);
                proxy.stall();
                tokio::time::sleep(Duration::from_millis(ms)).await;
                proxy.resume();
                format!("stall the stream {ms} ms")
            }
            4 => {
                let after = rng.below(20_000);
                proxy.cut(after);
                format!("cut the stream after {after} bytes")
            }
            5 => {
                let ms = 300 + rng.below(1700);
                proxy.refuse(true);
                proxy.cut(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                proxy.refuse(false);
                format!("refuse connections {ms} ms")
            }
            _ => {
                // Staged files more than a second old are in the replica (100 ms sync
                // interval): without them a follower behind catches up from there.
                let mut pruned = 0;
                let mut files: Vec<_> = std::fs::read_dir(&staged)
                    .map(|d| d.flatten().map(|e| e.path()).collect())
                    .unwrap_or_default();
                files.sort();
                files.pop();
                for file in files {
                    let old = std::fs::metadata(&file)
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(1));
                    if old && std::fs::remove_file(&file).is_ok() {
                        pruned += 1;
                    }
                }
                format!("prune {pruned} staged files")
            }
        };
        events.push(format!("{:.1}s {event}", started.elapsed().as_secs_f64()));
        for (i, out) in [&stream_db, &poll_db].into_iter().enumerate() {
            let now = follow_position(out);
            if let (Some((history, txid)), Some((was_history, was))) = (&now, &seen[i]) {
                assert!(
                    history != was_history || txid >= was,
                    "{}: TXID went back from {was:x} to {txid:x} in history {history} (seed {seed}; events: {events:#?})",
                    out.display()
                );
            }
            if now.is_some() {
                seen[i] = now;
            }
        }
    }
    tokio::task::spawn_blocking(move || wait_all(writers))
        .await
        .unwrap();
    // A last stretch with the network whole: the stream's follower, however it was last
    // started, takes these commits from the stream (a follower killed with SIGKILL never
    // says how many it took, so the count below is its last run's).
    setup.write_for(1, 3.0).await;
    for reader in readers {
        let read = finished(reader).await;
        assert!(
            read.status.success(),
            "a reader (seed {seed}; events: {events:#?}): {}",
            said(&read)
        );
    }
    wait_equal(
        &setup,
        &stream_db,
        &format!("the stream's follower (seed {seed})"),
    );
    wait_equal(
        &setup,
        &poll_db,
        &format!("the polling follower (seed {seed})"),
    );
    assert!(proxy.forwarded() > 0, "nothing came through the proxy");
    for follower in [stream, poll] {
        signal(&follower, "-TERM");
        let status = finished(follower).await;
        assert!(status.status.success(), "{}", said(&status));
    }
    stop(&setup, primary);
    // The stream carried files (each run of the follower counts its own at its end).
    let log = std::fs::read_to_string(setup.dir.join("stream.log")).unwrap();
    let streamed: u64 = log
        .split(" files from the primary's stream")
        .filter_map(|s| s.rsplit('(').next()?.trim().parse::<u64>().ok())
        .sum();
    assert!(streamed > 0, "no file came by the stream:\n{log}");
    eprintln!(
        "follow campaign {seed}: {} events, {} connections through the proxy",
        events.len(),
        proxy.connections()
    );
}
