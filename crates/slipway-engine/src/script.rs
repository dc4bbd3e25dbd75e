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
