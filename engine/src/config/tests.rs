//! Litestream configs read, bad values and unknown keys named, bounds held.

use super::*;

#[test]
fn durations_parse_like_go() {
    assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
    assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
    assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
    assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
    assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
    for bad in [
        "",
        "30",
        "5 minutes",
        "1d",
        "s",
        "99999999999999999999h",
        "1e400s",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
}

#[test]
fn reads_a_litestream_config() {
    let c = Config::parse(
        r#"
levels:
  - interval: 30s
  - interval: 5m
snapshot:
  interval: 24h
  retention: 72h
l0-retention: 5m
dbs:
  - path: /data/app.db
    replica:
      url: s3://bucket/app?endpoint=http://127.0.0.1:9000&region=us-east-1
  - path: /data/other.db
    monitor-interval: 500ms
    replicas:
      - type: file
        path: /backups/other
  - path: /data/third.db
    monitor-interval: 2s
    replica:
      sync-interval: 10s
      type: s3
      bucket: b
      path: /third/
      endpoint: http://localhost:9000
"#,
    )
    .unwrap();
    assert_eq!(c.levels.len(), 2);
    assert_eq!(c.snapshot_retention, Some(Duration::from_secs(72 * 3600)));
    assert_eq!(c.l0_retention, Some(Duration::from_secs(300)));
    assert_eq!(c.dbs.len(), 3);
    assert_eq!(
        c.dbs[1].replicas[0],
        ReplicaUrl::File {
            root: "/backups/other".into()
        }
    );
    assert_eq!(c.dbs[0].sync_interval, None);
    assert_eq!(c.dbs[1].sync_interval, Some(Duration::from_millis(500)));
    assert_eq!(c.dbs[2].sync_interval, Some(Duration::from_secs(10)));
    assert!(
        matches!(&c.dbs[2].replicas[0], ReplicaUrl::S3 { bucket, prefix, .. } if bucket == "b" && prefix == "third")
    );
}

#[test]
fn aliases_that_multiply_are_refused_before_they_are_expanded() {
    // Nine levels of ten aliases each: 10^9 nodes from a few hundred bytes.
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let p = i - 1;
        bomb.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    bomb.push_str("dbs: [{path: a, replica: {url: /x}}]\n");
    let started = std::time::Instant::now();
    let e = Config::parse(&bomb).unwrap_err().to_string();
    assert!(e.contains("aliases"), "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // Aliases used modestly still work (and are unknown keys here, named as such).
    let fine = "base: &b {url: /x}\ndbs: [{path: a, replica: *b}]\n";
    let e = Config::parse(fine).unwrap_err().to_string();
    assert!(e.contains("base"), "{e}");
    // One long string aliased many times is refused too.
    let mut long = format!("big: &b \"{}\"\nlst: [", "x".repeat(100_000));
    long.push_str(&vec!["*b"; 5_000].join(", "));
    long.push_str("]\ndbs: [{path: a, replica: {url: /x}}]\n");
    let e = Config::parse(&long).unwrap_err().to_string();
    assert!(e.contains("aliases"), "{e}");
    // Deep nesting and huge input are refused too, not crashed on.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(Config::parse(&deep).is_err());
    let huge = format!("dbs: []\n#{}\n", "x".repeat(MAX_CONFIG_BYTES));
    assert!(
        Config::parse(&huge)
            .unwrap_err()
            .to_string()
            .contains("at most")
    );
}

#[test]
fn unknown_keys_and_bad_values_name_the_key() {
    for (yaml, key) in [
        (
            "dbs: [{path: a, replica: {url: /x}}]\nadress: ':9090'",
            "adress",
        ),
        (
            "dbs: [{path: a, replica: {url: /x, colour: red}}]",
            "dbs[0].replica.colour",
        ),
        (
            "dbs: [{path: a, replica: {url: /x}, monitor-interval: soon}]",
            "dbs[0].monitor-interval",
        ),
        (
            "dbs: [{path: a, replicas: [{url: /x, sync-interval: 1}]}]",
            "dbs[0].replicas[0].sync-interval",
        ),
        ("dbs: [{replica: {url: /x}}]", "dbs[0].path"),
        (
            "levels: [{interval: 1x}]\ndbs: [{path: a, replica: {url: /x}}]",
            "levels[0].interval",
        ),
        ("dbs: []", "dbs"),
        (
            "dbs: [{path: a, replica: {type: file, path: /x, bucket: b}}]",
            "dbs[0].replica.bucket",
        ),
        (
            "dbs: [{path: a, replica: {url: /x, bucket: r}}]",
            "dbs[0].replica.bucket",
        ),
        (
            "dbs: [{path: a, replica: {url: /x}, monitor-interval: 0s}]",
            "dbs[0].monitor-interval",
        ),
        (
            "dbs: [{path: a, replica: {url: /x}, checkpoint-interval: 0}]",
            "dbs[0].checkpoint-interval",
        ),
        (
            "dbs: [{path: a, replica: {url: /x, sync-interval: 0ms}}]",
            "dbs[0].replica.sync-interval",
        ),
        (
            "dbs: [{path: a, replica: {url: /x}, monitor-interval: 99999999999999999999h}]",
            "dbs[0].monitor-interval",
        ),
        (
            "snapshot: {interval: 0s}\ndbs: [{path: a, replica: {url: /x}}]",
            "snapshot.interval",
        ),
    ] {
        let e = Config::parse(yaml).unwrap_err();
        assert_eq!(e.key, key, "{yaml}: {e}");
    }
}

#[test]
fn expands_environment_variables() {
    let home = std::env::var("HOME").unwrap_or_default();
    assert_eq!(
        expand_env("a: ${HOME}/x $HOME $"),
        format!("a: {home}/x {home} $")
    );
    // A `$` before a non-ASCII letter is no variable, and the text after it is intact.
    assert_eq!(expand_env("p: $é/ü $HOME!"), format!("p: $é/ü {home}!"));
    assert_eq!(
        expand_env("x: ${STRATA_SURELY_UNSET_VARIABLE}y"),
        "x: y",
        "unset is empty, as in Litestream"
    );
    let c = Config::parse_with("dbs: [{path: $HOME/a, replica: {url: /x}}]", false).unwrap();
    assert_eq!(c.dbs[0].path, PathBuf::from("$HOME/a"), "-no-expand-env");
}

#[test]
fn litestreams_other_keys_are_used_accepted_or_refused_by_name() {
    let c = Config::parse(
        r#"
logging: {level: debug, type: json, stderr: true}
socket: {enabled: true, path: /tmp/l.sock, permissions: 0600}
mcp-addr: ":3001"
validation: {interval: 1h}
verify-compaction: true
l0-retention-check-interval: 15s
shutdown-sync-interval: 500ms
dbs:
  - path: /data/app.db
    meta-path: /data/meta
    busy-timeout: 5s
    max-sync-wal-bytes: 1048576
    restore-if-db-not-exists: true
    replica:
      url: s3://bucket/app
      storage-class: STANDARD_IA
      sign-payload: true
      require-content-md5: false
      auto-recover: true
      max-sync-ltx-files: 100
      validation-interval: 1h
      part-size: 5242880
      concurrency: 5
"#,
    )
    .unwrap();
    let db = &c.dbs[0];
    assert_eq!(db.busy_timeout, Some(Duration::from_secs(5)));
    assert_eq!(db.max_wal_bytes, Some(1 << 20));
    assert!(db.restore_if_missing);
    let dbs = crate::store::config_databases(&c).unwrap();
    assert_eq!(dbs[0].options.busy_timeout, Duration::from_secs(5));
    assert_eq!(dbs[0].options.max_wal_bytes, 1 << 20);

    // Encryption settings are refused rather than dropped; so are replica types strata
    // cannot write, by name.
    for (yaml, key, said) in [
        (
            "dbs: [{path: a, replica: {url: s3://b/p, sse-kms-key-id: k}}]",
            "dbs[0].replica.sse-kms-key-id",
            "encryption",
        ),
        (
            "dbs: [{path: a, replica: {type: s3, bucket: b, sse-customer-key: k}}]",
            "dbs[0].replica.sse-customer-key",
            "encryption",
        ),
        (
            "dbs: [{path: a, replica: {type: sftp, host: h, path: /x}}]",
            "dbs[0].replica.type",
            "\"sftp\"",
        ),
        (
            "dbs: [{path: a, replica: {type: nats}}]",
            "dbs[0].replica.type",
            "\"nats\"",
        ),
        (
            "dbs: [{path: a, max-sync-wal-bytes: 0, replica: {url: /x}}]",
            "dbs[0].max-sync-wal-bytes",
            "above zero",
        ),
    ] {
        let e = Config::parse(yaml).unwrap_err();
        assert_eq!(e.key, key, "{yaml}");
        assert!(e.to_string().contains(said), "{yaml}: {e}");
    }
}

#[test]
fn an_access_key_in_the_config_goes_to_each_s3_replica_and_is_never_printed() {
    let c = Config::parse(
        r#"
access-key-id: TOPKEY
secret-access-key: topsecret
dbs:
  - path: /a.db
    replica: {url: s3://b/a}
  - path: /b.db
    replica: {type: s3, bucket: b, path: b, access-key-id: OWNKEY, secret-access-key: ownsecret}
  - path: /c.db
    replica: {url: /c}
"#,
    )
    .unwrap();
    let key = |i: usize| match &c.dbs[i].replicas[0] {
        ReplicaUrl::S3 { credentials, .. } => credentials.clone(),
        _ => None,
    };
    assert_eq!(key(0).unwrap().access_key_id, "TOPKEY");
    assert_eq!(key(0).unwrap().secret_access_key, "topsecret");
    assert_eq!(key(1).unwrap().access_key_id, "OWNKEY");
    let shown = format!("{:?} {}", c.dbs, c.dbs[0].replicas[0]);
    assert!(
        !shown.contains("topsecret") && !shown.contains("ownsecret"),
        "{shown}"
    );
    for (yaml, key) in [
        (
            "access-key-id: K\ndbs: [{path: a, replica: {url: s3://b/p}}]",
            "dbs[0].replica.secret-access-key",
        ),
        (
            "dbs: [{path: a, replica: {url: s3://b/p, secret-access-key: S}}]",
            "dbs[0].replica.access-key-id",
        ),
        (
            "dbs: [{path: a, replica: {url: /x, access-key-id: K, secret-access-key: S}}]",
            "dbs[0].replica.access-key-id",
        ),
    ] {
        assert_eq!(Config::parse(yaml).unwrap_err().key, key, "{yaml}");
    }
}

#[test]
fn top_level_replica_settings_are_defaults_for_the_replicas_that_give_none() {
    let c = Config::parse(
        r#"
region: eu-west-3
endpoint: http://127.0.0.1:9000
force-path-style: false
skip-verify: true
bucket: topbucket
sync-interval: 7s
dbs:
  - path: /a.db
    replica: {type: s3, path: a}
  - path: /b.db
    replica: {url: "s3://urlbucket/b", region: us-east-2}
  - path: /c.db
    replica: {url: "s3://urlbucket/c?endpoint=http://10.0.0.1:9000", sync-interval: 2s}
  - path: /d.db
    replica: {url: /d}
  - path: /e.db
    replica: {type: s3, bucket: own, path: e, force-path-style: true}
"#,
    )
    .unwrap();
    let s3 = |i: usize| match &c.dbs[i].replicas[0] {
        ReplicaUrl::S3 {
            bucket,
            endpoint,
            region,
            force_path_style,
            skip_verify,
            ..
        } => (
            bucket.clone(),
            endpoint.clone().unwrap_or_default(),
            region.clone().unwrap_or_default(),
            *force_path_style,
            *skip_verify,
        ),
        other => panic!("{other}"),
    };
    let top = "http://127.0.0.1:9000".to_owned();
    assert_eq!(
        s3(0),
        (
            "topbucket".into(),
            top.clone(),
            "eu-west-3".into(),
            false,
            true
        )
    );
    // A URL's bucket and its own settings win.
    assert_eq!(
        s3(1),
        (
            "urlbucket".into(),
            top.clone(),
            "us-east-2".into(),
            false,
            true
        )
    );
    assert_eq!(s3(2).1, "http://10.0.0.1:9000");
    assert_eq!(s3(4).0, "own");
    assert!(s3(4).3);
    assert!(matches!(c.dbs[3].replicas[0], ReplicaUrl::File { .. }));
    let interval = |i: usize| c.dbs[i].sync_interval;
    assert_eq!(interval(0), Some(Duration::from_secs(7)));
    assert_eq!(interval(2), Some(Duration::from_secs(2)));
    assert_eq!(interval(3), Some(Duration::from_secs(7)));
    // YAML 1.1's spellings of booleans, as Litestream's YAML reader takes them.
    let c = Config::parse(
        "force-path-style: yes\nskip-verify: off\ndbs: [{path: /a.db, replica: {url: \"s3://b/a\"}}]",
    )
    .unwrap();
    assert!(matches!(
        c.dbs[0].replicas[0],
        ReplicaUrl::S3 {
            force_path_style: true,
            skip_verify: false,
            ..
        }
    ));
    // Empty values are no defaults; the access key's two halves merge key by key.
    let c = Config::parse(
        "bucket: \"\"\naccess-key-id: \"\"\nendpoint: \"\"\nsecret-access-key: TOPSECRET\n\
         dbs: [{path: /a.db, replica: {url: \"s3://b/a\", access-key-id: OWN}}, {path: /f.db, replica: {url: /f}}]",
    )
    .unwrap();
    match &c.dbs[0].replicas[0] {
        ReplicaUrl::S3 {
            credentials: Some(k),
            endpoint: None,
            ..
        } => {
            assert_eq!(
                (k.access_key_id.as_str(), k.secret_access_key.as_str()),
                ("OWN", "TOPSECRET")
            );
        }
        other => panic!("{other:?}"),
    }
    // A bad default is named by its own key.
    for (yaml, key) in [
        (
            "bucket: 'a/b'\ndbs: [{path: a, replica: {type: s3}}]",
            "bucket",
        ),
        (
            "endpoint: nope\ndbs: [{path: a, replica: {url: /x}}]",
            "endpoint",
        ),
        (
            "force-path-style: maybe\ndbs: [{path: a, replica: {url: /x}}]",
            "force-path-style",
        ),
    ] {
        assert_eq!(Config::parse(yaml).unwrap_err().key, key, "{yaml}");
    }
}

#[test]
fn the_control_socket_is_read_as_litestream_reads_it() {
    let with = |socket: &str| {
        Config::parse(&format!(
            "socket: {socket}\ndbs: [{{path: a, replica: {{url: /x}}}}]"
        ))
    };
    let on = with("{enabled: true, path: /run/s.sock, permissions: 0660}").unwrap();
    let socket = on.socket.unwrap();
    assert_eq!(socket.path, PathBuf::from("/run/s.sock"));
    assert_eq!(socket.permissions, 0o660);
    let default = with("{enabled: true}").unwrap().socket.unwrap();
    assert_eq!(default.path, PathBuf::from(DEFAULT_SOCKET));
    assert_eq!(default.permissions, 0o600);
    assert_eq!(
        with("{enabled: true, permissions: '0640'}")
            .unwrap()
            .socket
            .unwrap()
            .permissions,
        0o640
    );
    assert!(with("{enabled: false, path: /x}").unwrap().socket.is_none());
    // As Litestream's YAML 1.1 reads them: a leading 0 is octal, else decimal (420 is 0644).
    let block = |p: &str| {
        Config::parse(&format!(
            "socket:\n  enabled: true\n  permissions: {p}\ndbs: [{{path: a, replica: {{url: /x}}}}]"
        ))
        .map(|c| c.socket.unwrap().permissions)
    };
    assert_eq!(block("0640").unwrap(), 0o640);
    assert_eq!(block("0o640").unwrap(), 0o640);
    assert_eq!(block("420").unwrap(), 0o644);
    assert_eq!(block("0600 # owner only").unwrap(), 0o600);
    assert!(block("0999").is_err() && block("1000").is_err());
    for bad in [
        "{enabled: true, permissions: 0999}",
        "{enabled: true, permissions: rw}",
        "{enabled: true, colour: red}",
    ] {
        assert!(with(bad).is_err(), "{bad}");
    }
}
