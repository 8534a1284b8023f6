//! Litestream's command lines are Go's: a flag's name takes one dash or two (`-config x`,
//! `-config=x`, `--config x`), and a single dash never starts a cluster of one-letter
//! flags. clap would read `-config` as `-c onfig` and a mistyped `-outpt=x` as `-o utpt=x`,
//! so before parsing, every single-dash word of more than one letter gets a second dash:
//! a flag strata has is then parsed as such, and one it lacks is refused by name.

use std::ffi::OsString;

/// `args` (the program's name first) with each single-dash `-name` or `-name=value` (a
/// name of two letters or more) spelled `--name`, and a value that starts with a dash
/// joined to its flag (`-o -odd.db` as `-o=-odd.db`). Left as they are: one-letter flags,
/// negative numbers, other values, and everything after `--`.
pub fn double_dashed(
    root: &clap::Command,
    args: impl IntoIterator<Item = OsString>,
) -> Vec<OsString> {
    let mut root = root.clone();
    // Adds the generated flags (`--help`, `--version`) and passes global flags down.
    root.build();
    let mut args = args.into_iter();
    let mut out: Vec<OsString> = args.next().into_iter().collect();
    let mut current = &root;
    let mut value_next = false;
    for arg in args.by_ref() {
        let text = match arg.to_str() {
            Some(text) if !std::mem::take(&mut value_next) => text,
            // A flag's value that starts with a dash, which clap would take for a flag:
            // joined to it (`-o=-odd.db`), as Go takes it.
            Some(text) if text.starts_with('-') => {
                let mut joined = out.pop().unwrap_or_default();
                joined.push("=");
                joined.push(text);
                out.push(joined);
                continue;
            }
            _ => {
                out.push(arg);
                continue;
            }
        };
        if text == "--" {
            out.push(arg);
            break;
        }
        let flag = text
            .strip_prefix("--")
            .map(|word| (word, true))
            .or_else(|| text.strip_prefix('-').map(|word| (word, false)))
            .filter(|(word, _)| !word.is_empty() && word.parse::<f64>().is_err());
        let Some((word, double)) = flag else {
            if let Some(sub) = current.find_subcommand(text) {
                current = sub;
            }
            out.push(arg);
            continue;
        };
        let (name, value) = match word.split_once('=') {
            Some((name, _)) => (name, true),
            None => (word, false),
        };
        let long = double || name.chars().count() > 1;
        let found = current.get_arguments().find(|a| {
            if long {
                a.get_long() == Some(name)
                    || a.get_all_aliases().unwrap_or_default().contains(&name)
            } else {
                a.get_short().map(String::from).as_deref() == Some(name)
            }
        });
        value_next = !value && found.is_some_and(|a| a.get_action().takes_values());
        out.push(if long && !double {
            format!("-{text}").into()
        } else {
            arg
        });
    }
    out.extend(args);
    out
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
            .version("1.0")
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
        assert_eq!(rewrite(&["strata", "-version"]), ["strata", "--version"]);
    }

    #[test]
    fn one_letter_flags_values_and_numbers_stay() {
        assert_eq!(
            rewrite(&[
                "strata", "restore", "-o", "a.db", "-txid", "5", "-f", "s3://b/p"
            ]),
            [
                "strata", "restore", "-o", "a.db", "--txid", "5", "-f", "s3://b/p"
            ]
        );
        // A value that starts with a dash is the flag's, as in Go.
        assert_eq!(
            rewrite(&["strata", "restore", "-o", "-odd.db", "-txid", "-5", "x"]),
            ["strata", "restore", "-o=-odd.db", "--txid=-5", "x"]
        );
        let matches = command()
            .try_get_matches_from(rewrite(&["strata", "restore", "-o", "-odd.db", "x"]))
            .unwrap();
        let (_, restore) = matches.subcommand().unwrap();
        assert_eq!(restore.get_one::<String>("output").unwrap(), "-odd.db");
        assert_eq!(
            rewrite(&["strata", "restore", "--", "-txid"]),
            ["strata", "restore", "--", "-txid"]
        );
    }

    #[test]
    fn an_unknown_or_mistyped_flag_stays_one_name_for_clap_to_refuse() {
        // Not `-o utpt=new.db`, which would restore to a file named `utpt=new.db`.
        assert_eq!(
            rewrite(&["strata", "restore", "-outpt=new.db", "rep"]),
            ["strata", "restore", "--outpt=new.db", "rep"]
        );
        // Another command's flag: refused by its name.
        assert_eq!(
            rewrite(&["strata", "restore", "-config", "x"]),
            ["strata", "restore", "--config", "x"]
        );
        let error = command()
            .try_get_matches_from(rewrite(&["strata", "restore", "-forc", "rep"]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("--forc"), "{error}");
    }
}
