fn main() -> std::process::ExitCode {
    koala::cli::run()
}
