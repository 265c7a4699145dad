//! What every task does with its command line: it takes its own options, `train` and `ablation` pass what follows
//! `--` on to `angle train`, and anything else is refused by name before any work starts (an argument that is
//! silently dropped makes a user wait for a run they did not ask for).

use anyhow::bail;

/// The tasks that pass the arguments after `--` on to `angle train`.
pub const PASSTHROUGH_TASKS: &[&str] = &["train", "ablation", "staged"];

/// Splits at the first `--`: the task's own arguments, and what follows `--` (empty without one).
pub fn split_passthrough(args: &[String]) -> (&[String], &[String]) {
    match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[]),
    }
}

/// For a task that passes nothing on: a `--` would make what follows look forwarded while nothing reads it.
pub fn no_passthrough(task: &str, args: &[String]) -> anyhow::Result<()> {
    if let Some(i) = args.iter().position(|a| a == "--") {
        let after = &args[i + 1..];
        bail!(
            "cargo xtask {task} passes nothing on to another program, so `--` and what follows it ({}) would be \
             ignored; give {task}'s own options without `--` (cargo xtask {task} --help)",
            if after.is_empty() {
                "nothing".to_string()
            } else {
                quoted(after)
            }
        );
    }
    Ok(())
}

/// Refuses the arguments a task's parser did not take, all of them named at once.
pub fn reject_unknown(task: &str, unknown: &[String], usage: &str) -> anyhow::Result<()> {
    if unknown.is_empty() {
        return Ok(());
    }
    bail!(
        "cargo xtask {task} does not use {} {}\n\n{usage}",
        if unknown.len() == 1 {
            "the argument"
        } else {
            "the arguments"
        },
        quoted(unknown)
    )
}

/// Options after `--` that would change or break what the task itself controls: `angle train` would take them,
/// the task would not know (its settings, estimate and output paths would be wrong).
pub fn reject_owned(task: &str, passed: &[String], owned: &[&str], hint: &str) -> anyhow::Result<()> {
    let hits: Vec<String> = passed
        .iter()
        .filter(|a| {
            let name = a.split_once('=').map_or(a.as_str(), |(n, _)| n);
            owned.contains(&name)
        })
        .cloned()
        .collect();
    if hits.is_empty() {
        return Ok(());
    }
    bail!(
        "{} after `--` would go to `angle train`, but cargo xtask {task} sets {} itself: {hint}",
        quoted(&hits),
        if hits.len() == 1 { "it" } else { "them" }
    )
}

fn quoted(args: &[String]) -> String {
    args.iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn splits_at_the_first_double_dash() {
        let a = v(&["--torch", "py", "--", "--epochs", "1", "--", "x"]);
        let (own, passed) = split_passthrough(&a);
        assert_eq!(own, &v(&["--torch", "py"])[..]);
        assert_eq!(passed, &v(&["--epochs", "1", "--", "x"])[..]);
        let a = v(&["--resolve-only"]);
        let (own, passed) = split_passthrough(&a);
        assert_eq!((own.len(), passed.len()), (1, 0));
    }

    #[test]
    fn a_double_dash_is_refused_where_nothing_is_passed_on() {
        let err = no_passthrough("bench", &v(&["--threads", "2", "--", "--steps", "3"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cargo xtask bench"), "{err}");
        assert!(err.contains("\"--steps\", \"3\""), "{err}");
        let err = no_passthrough("kernels", &v(&["--"])).unwrap_err().to_string();
        assert!(err.contains("nothing"), "{err}");
        no_passthrough("bench", &v(&["--threads", "2"])).unwrap();
    }

    #[test]
    fn unknown_arguments_are_all_named() {
        let err = reject_unknown("gpu-check", &v(&["--fast", "3"]), "USAGE")
            .unwrap_err()
            .to_string();
        assert!(err.contains("the arguments \"--fast\", \"3\""), "{err}");
        assert!(err.ends_with("USAGE"), "{err}");
        reject_unknown("gpu-check", &[], "USAGE").unwrap();
    }

    #[test]
    fn owned_options_after_the_double_dash_are_named() {
        let err = reject_owned(
            "ablation",
            &v(&["--max-steps", "3", "--dropout=false", "--output=x"]),
            &["--max-steps", "--output"],
            "put them before `--`",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("\"--max-steps\", \"--output=x\""), "{err}");
        assert!(!err.contains("dropout"), "{err}");
        reject_owned("ablation", &v(&["--dropout", "false"]), &["--output"], "").unwrap();
    }
}
