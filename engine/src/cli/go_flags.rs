//! Litestream's command lines are Go's: a long flag takes one dash or two (`-config x`,
//! `-config=x`, `--config x`). clap reads `-config` as `-c onfig`, so before parsing, a
//! single-dash word naming a long flag of the command being parsed gets its second dash.

use std::ffi::OsString;

/// `args` (the program's name first) with each Go-style `-flag` or `-flag=value` that names
/// a long flag of `root` or of the subcommand it is in spelled `--flag`. Anything else,
/// and everything after `--`, is left as it is: short flags (`-o`), values, negative
/// numbers.
pub fn double_dashed(
    root: &clap::Command,
    args: impl IntoIterator<Item = OsString>,
) -> Vec<OsString> {
    let mut args = args.into_iter();
    let mut out: Vec<OsString> = args.next().into_iter().collect();
    let globals: Vec<String> = long_names(root);
    let mut current = root;
    let mut known = globals.clone();
    for arg in args.by_ref() {
        let Some(text) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if text == "--" {
            out.push(arg);
            break;
        }
        if let Some(word) = text.strip_prefix('-').filter(|w| !w.starts_with('-')) {
            let name = word.split_once('=').map_or(word, |(name, _)| name);
            if name.len() > 1 && known.iter().any(|k| k == name) {
                out.push(format!("-{text}").into());
                continue;
            }
        } else if !text.starts_with('-')
            && let Some(sub) = current.find_subcommand(text)
        {
            current = sub;
            known = globals.iter().cloned().chain(long_names(sub)).collect();
        }
        out.push(arg);
    }
    out.extend(args);
    out
}

/// The long names and aliases of `command`'s own flags.
fn long_names(command: &clap::Command) -> Vec<String> {
    command
        .get_arguments()
        .flat_map(|a| {
            a.get_long()
                .into_iter()
                .chain(a.get_all_aliases().unwrap_or_default())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command() -> clap::Command {
        clap::Command::new("strata")
            .arg(clap::Arg::new("log").long("log").global(true))
            .subcommand(
                clap::Command::new("restore")
                    .arg(clap::Arg::new("output").short('o').long("output"))
                    .arg(clap::Arg::new("txid").long("txid"))
                    .arg(
                        clap::Arg::new("follow")
                            .short('f')
                            .long("follow")
                            .action(clap::ArgAction::SetTrue),
                    )
                    .arg(clap::Arg::new("url")),
            )
            .subcommand(
                clap::Command::new("replicate").arg(
                    clap::Arg::new("config")
                        .short('c')
                        .long("config")
                        .alias("config-path"),
                ),
            )
    }

    fn rewrite(args: &[&str]) -> Vec<String> {
        double_dashed(&command(), args.iter().map(OsString::from))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn a_long_flag_with_one_dash_gets_two() {
        assert_eq!(
            rewrite(&["strata", "replicate", "-config", "a.yml"]),
            ["strata", "replicate", "--config", "a.yml"]
        );
        assert_eq!(
            rewrite(&["strata", "replicate", "-config=a.yml", "-log", "debug"]),
            ["strata", "replicate", "--config=a.yml", "--log", "debug"]
        );
        assert_eq!(
            rewrite(&["strata", "replicate", "-config-path", "a.yml"]),
            ["strata", "replicate", "--config-path", "a.yml"]
        );
    }

    #[test]
    fn short_flags_values_and_other_commands_flags_stay() {
        assert_eq!(
            rewrite(&[
                "strata", "restore", "-o", "a.db", "-txid", "-5", "-f", "s3://b/p"
            ]),
            [
                "strata", "restore", "-o", "a.db", "--txid", "-5", "-f", "s3://b/p"
            ]
        );
        // `-config` is replicate's, not restore's: clap says what is wrong with it.
        assert_eq!(
            rewrite(&["strata", "restore", "-config", "x"]),
            ["strata", "restore", "-config", "x"]
        );
        assert_eq!(
            rewrite(&["strata", "restore", "--", "-txid"]),
            ["strata", "restore", "--", "-txid"]
        );
    }
}
