//! The `lethe` binary. Everything it does is in [`lethe::cli`].

fn main() -> std::process::ExitCode {
    lethe::cli::main()
}
