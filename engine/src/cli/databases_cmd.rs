//! `strata databases`: the databases a config lists, as Litestream's `databases` prints them.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use strata::config::Config;

#[derive(Debug, Args)]
pub struct DatabasesArgs {
    /// The config file [default: /etc/litestream.yml, as Litestream].
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Print JSON: an array of {"path", "replica"} (Litestream's fields).
    #[arg(long)]
    json: bool,
    /// Use the config file as written: no $VAR expansion (Litestream's flag).
    #[arg(long = "no-expand-env")]
    no_expand_env: bool,
}

pub fn run(args: DatabasesArgs) -> anyhow::Result<ExitCode> {
    let path = args
        .config
        .unwrap_or_else(|| super::LITESTREAM_CONFIG.into());
    let config = Config::load(&path, !args.no_expand_env)?;
    let rows: Vec<(String, String)> = config
        .dbs
        .iter()
        .map(|db| {
            let kinds: Vec<&str> = db.replicas.iter().map(super::replica_type).collect();
            (db.path.display().to_string(), kinds.join(","))
        })
        .collect();
    print!("{}", if args.json { json(&rows) } else { table(&rows) });
    Ok(ExitCode::SUCCESS)
}

/// Two columns, padded as Litestream pads them (two spaces between).
fn table(rows: &[(String, String)]) -> String {
    let mut cells = vec![vec!["path".to_owned(), "replica".to_owned()]];
    cells.extend(rows.iter().map(|(p, k)| vec![p.clone(), k.clone()]));
    super::columns(&cells)
}

fn json(rows: &[(String, String)]) -> String {
    let objects: Vec<Vec<(&str, String)>> = rows
        .iter()
        .map(|(path, kind)| {
            vec![
                ("path", super::json_string(path)),
                ("replica", super::json_string(kind)),
            ]
        })
        .collect();
    super::json_objects(&objects)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_litestreams_columns_and_json() {
        let rows = vec![
            ("/data/a.db".to_owned(), "file".to_owned()),
            ("/b \"q\".db".to_owned(), "s3".to_owned()),
        ];
        assert_eq!(
            table(&rows),
            "path        replica\n/data/a.db  file\n/b \"q\".db   s3\n"
        );
        assert_eq!(
            json(&rows),
            "[\n  {\n    \"path\": \"/data/a.db\",\n    \"replica\": \"file\"\n  },\n  {\n    \"path\": \"/b \\\"q\\\".db\",\n    \"replica\": \"s3\"\n  }\n]\n"
        );
        assert_eq!(json(&[]), "[]\n");
    }
}
