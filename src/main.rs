//! The `hooksign` binary: parse the command line, run it, map the result to an exit code.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

/// Exit code for a configuration that cannot start `serve` (EX_CONFIG is 78; linkerd and
/// sysexits' EX_USAGE use 64, which the spec names).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    match hooksign::cli::run(hooksign::cli::Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            let config = err.is_config();
            let message = hooksign::error_chain::error_chain(&err);
            // Not eprintln!: a closed stderr must not turn an error into a panic. In JSON mode
            // the last line is JSON like every other.
            let line = if hooksign::logging::logs_are_json() {
                serde_json::json!({"level": "ERROR", "message": message, "target": "hooksign"})
                    .to_string()
            } else {
                format!("hooksign: {message}")
            };
            let _ = writeln!(std::io::stderr(), "{line}");
            if config {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
