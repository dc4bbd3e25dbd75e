//! The shell script that runs a step's `commands`.

/// Builds the script run as `/bin/sh -c <script>`: `set -e`, then for each command a trace
/// line `+ <command>` followed by the command itself.
///
/// The trace is printed with `printf '%s\n'` and a single-quoted argument rather than `echo`:
/// single quotes stop the shell from expanding `$VAR` or `$(...)` in the trace (so the trace of
/// `echo $TOKEN` shows `$TOKEN`, not its value), and some `echo`s (dash's) interpret
/// backslashes, which would print `\n` in a command as a line break.
pub(crate) fn script(commands: &[String]) -> String {
    let mut script = String::from("set -e\n");
    for command in commands {
        script.push_str("printf '%s\\n' ");
        script.push_str(&shell_quote(&format!("+ {command}")));
        script.push('\n');
        script.push_str(command);
        script.push('\n');
    }
    script
}

/// The first line a pre-started ("warm") step container reads before anything else: the
/// build status so far, `success` or `failure` (see [`gated`]).
pub(crate) fn release_line(failed: bool) -> &'static [u8] {
    if failed { b"failure\n" } else { b"success\n" }
}

/// [`script`] held at a gate: the shell first reads one line from stdin and only then runs
/// the commands. The line is the build status at release ([`release_line`]), exported as
/// `DRONE_BUILD_STATUS` and `CI_BUILD_STATUS` (the environment baked into the container holds
/// the status at pre-start, which may be stale). End of input without a line means the step
/// is not going to run: the shell exits quietly, printing nothing.
pub(crate) fn gated(commands: &[String]) -> String {
    let mut gated = String::from(
        "read -r SLIPWAY_GO || exit 0\n\
         export DRONE_BUILD_STATUS=\"$SLIPWAY_GO\" CI_BUILD_STATUS=\"$SLIPWAY_GO\"\n\
         unset SLIPWAY_GO\n",
    );
    gated.push_str(&script(commands));
    gated
}

/// `text` as one single-quoted shell word: nothing inside is expanded.
pub(crate) fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_single_quotes() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn trace_is_not_expanded() -> Result<(), Box<dyn std::error::Error>> {
        let commands = vec![
            "echo \"$HOME\" 'x' \\n".to_string(),
            "X=1; echo $(echo sub)".to_string(),
        ];
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(script(&commands))
            .env("HOME", "/home/h")
            .output()?;
        let stdout = String::from_utf8(out.stdout)?;
        assert_eq!(
            stdout,
            "+ echo \"$HOME\" 'x' \\n\n/home/h x n\n+ X=1; echo $(echo sub)\nsub\n"
        );
        Ok(())
    }

    fn run_gated(commands: &[&str], stdin: &[u8]) -> Result<std::process::Output, std::io::Error> {
        use std::io::Write;
        let commands: Vec<String> = commands.iter().map(|c| c.to_string()).collect();
        let mut child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(gated(&commands))
            .env("DRONE_BUILD_STATUS", "success")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        if let Some(mut input) = child.stdin.take() {
            input.write_all(stdin)?;
        }
        child.wait_with_output()
    }

    #[test]
    fn gate_passes_the_status_and_closes_stdin() -> Result<(), Box<dyn std::error::Error>> {
        let out = run_gated(
            &[
                "echo \"$DRONE_BUILD_STATUS $CI_BUILD_STATUS\"",
                "cat",
                "echo after",
            ],
            release_line(true),
        )?;
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(
            String::from_utf8(out.stdout)?,
            "+ echo \"$DRONE_BUILD_STATUS $CI_BUILD_STATUS\"\nfailure failure\n+ cat\n+ echo after\nafter\n"
        );
        Ok(())
    }

    #[test]
    fn gate_closed_without_a_line_runs_nothing() -> Result<(), Box<dyn std::error::Error>> {
        let out = run_gated(&["echo never", "exit 3"], b"")?;
        assert_eq!(out.status.code(), Some(0));
        assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
        Ok(())
    }

    #[test]
    fn stops_at_first_failure() -> Result<(), Box<dyn std::error::Error>> {
        let commands = vec!["false".to_string(), "echo never".to_string()];
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(script(&commands))
            .output()?;
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(String::from_utf8(out.stdout)?, "+ false\n");
        Ok(())
    }
}
