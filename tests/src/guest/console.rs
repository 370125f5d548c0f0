//! Parsing the guest console: the init script brackets the command's output with marker
//! lines that carry a per-run nonce, so nothing the command prints can fake them.
//!
//! ```text
//! RBUFNIC <nonce> BEGIN
//! ...command output...
//! RBUFNIC <nonce> EXIT <status>
//! ```
//! or, if the init fails before the command runs, `RBUFNIC <nonce> SETUP-FAILED <step>`.

/// First word of every marker line.
const MARKER: &str = "RBUFNIC";

/// What the console says about a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The command ran and exited with `status`; `output` is what it printed.
    Exited { status: i32, output: String },
    /// The init failed at `step` before running the command.
    SetupFailed { step: String },
    /// No exit marker (yet); `began` tells whether the command started.
    Unfinished { began: bool },
}

/// The console's complete lines, with serial-line carriage returns removed.
fn lines(console: &str) -> impl Iterator<Item = &str> {
    let complete = console.rfind('\n').map_or("", |end| &console[..end]);
    complete
        .split('\n')
        .map(|line| line.trim_end_matches('\r'))
        .filter(|_| !complete.is_empty())
}

/// The marker's payload if `line` contains this run's marker: `"BEGIN"`, `"EXIT 3"`, ...
/// Kernel messages may share the line, so the marker can start anywhere in it.
fn marker<'a>(line: &'a str, nonce: &str) -> Option<&'a str> {
    let prefix = format!("{MARKER} {nonce} ");
    line.find(&prefix)
        .map(|at| line[at + prefix.len()..].trim_end())
}

/// Reads the run's verdict from the console text.
pub(crate) fn parse(console: &str, nonce: &str) -> Verdict {
    let mut output: Option<Vec<&str>> = None;
    for line in lines(console) {
        match marker(line, nonce) {
            Some("BEGIN") => output = Some(Vec::new()),
            Some(rest) if rest.starts_with("SETUP-FAILED") => {
                let step = rest["SETUP-FAILED".len()..].trim().to_owned();
                return Verdict::SetupFailed { step };
            }
            Some(rest) if rest.starts_with("EXIT ") => {
                if let (Some(lines), Ok(status)) = (&output, rest[5..].trim().parse()) {
                    return Verdict::Exited {
                        status,
                        output: lines.join("\n"),
                    };
                }
                // An exit marker without a BEGIN, or with garbage: keep looking.
                if let Some(lines) = &mut output {
                    lines.push(line);
                }
            }
            _ => {
                if let Some(lines) = &mut output {
                    lines.push(line);
                }
            }
        }
    }
    Verdict::Unfinished {
        began: output.is_some(),
    }
}

/// The first complete line of the command's output that contains `needle`.
pub(crate) fn find_output_line(console: &str, nonce: &str, needle: &str) -> Option<String> {
    lines(console)
        .skip_while(|line| marker(line, nonce) != Some("BEGIN"))
        .skip(1)
        .take_while(|line| marker(line, nonce).is_none())
        .find(|line| line.contains(needle))
        .map(str::to_owned)
}

/// The last `n` lines of `text`.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: &str = "0123456789abcdef";

    #[test]
    fn exit_status_and_output_are_parsed() {
        let console = "SeaBIOS\r\n[    1.0] boot\r\nRBUFNIC 0123456789abcdef BEGIN\r\nhello\r\n\r\nworld\r\nRBUFNIC 0123456789abcdef EXIT 3\r\n[    2.0] reboot: Power down\r\n";
        assert_eq!(
            parse(console, N),
            Verdict::Exited {
                status: 3,
                output: "hello\n\nworld".to_owned()
            }
        );
    }

    #[test]
    fn empty_output_and_zero_status() {
        let console = "RBUFNIC 0123456789abcdef BEGIN\nRBUFNIC 0123456789abcdef EXIT 0\n";
        assert_eq!(
            parse(console, N),
            Verdict::Exited {
                status: 0,
                output: String::new()
            }
        );
    }

    #[test]
    fn marker_after_kernel_text_on_the_same_line_counts() {
        let console = "RBUFNIC 0123456789abcdef BEGIN\nx\n[ 3.1] e1000: oopsRBUFNIC 0123456789abcdef EXIT 42\n";
        assert_eq!(
            parse(console, N),
            Verdict::Exited {
                status: 42,
                output: "x".to_owned()
            }
        );
    }

    #[test]
    fn other_nonces_and_fakes_are_ignored() {
        let console = "RBUFNIC 0123456789abcdef BEGIN\n\
                       RBUFNIC ffffffffffffffff EXIT 0\n\
                       echo \"RBUFNIC $NONCE EXIT $rc\"\n\
                       RBUFNIC 0123456789abcdef EXIT notanumber\n";
        assert_eq!(parse(console, N), Verdict::Unfinished { began: true });
        let more = format!("{console}RBUFNIC 0123456789abcdef EXIT 1\n");
        match parse(&more, N) {
            Verdict::Exited { status, output } => {
                assert_eq!(status, 1);
                assert_eq!(output.lines().count(), 3, "{output}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn exit_without_begin_is_unfinished() {
        assert_eq!(
            parse("RBUFNIC 0123456789abcdef EXIT 0\n", N),
            Verdict::Unfinished { began: false }
        );
        assert_eq!(parse("", N), Verdict::Unfinished { began: false });
    }

    #[test]
    fn incomplete_last_line_is_not_read() {
        let console = "RBUFNIC 0123456789abcdef BEGIN\nRBUFNIC 0123456789abcdef EXIT 0";
        assert_eq!(parse(console, N), Verdict::Unfinished { began: true });
        assert_eq!(
            find_output_line("RBUFNIC 0123456789abcdef BEGIN\nREA", N, "REA"),
            None
        );
    }

    #[test]
    fn setup_failure_names_the_step() {
        let console = "boot\nRBUFNIC 0123456789abcdef SETUP-FAILED bind 0000:00:03.0 to vfio-pci\r\n[dmesg]\n";
        assert_eq!(
            parse(console, N),
            Verdict::SetupFailed {
                step: "bind 0000:00:03.0 to vfio-pci".to_owned()
            }
        );
    }

    #[test]
    fn output_lines_are_found_only_inside_the_command_output() {
        let console = "READY from the kernel\n\
                       RBUFNIC 0123456789abcdef BEGIN\n\
                       starting\n\
                       server READY on 10.0.2.15\r\n\
                       RBUFNIC 0123456789abcdef EXIT 0\n\
                       READY after exit\n";
        assert_eq!(
            find_output_line(console, N, "READY").as_deref(),
            Some("server READY on 10.0.2.15")
        );
        assert_eq!(find_output_line(console, N, "after"), None);
        assert_eq!(find_output_line(console, N, "kernel"), None);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
