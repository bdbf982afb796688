//! The `orca` binary.

fn main() -> std::process::ExitCode {
    orca::cli::main()
}
