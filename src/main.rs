fn main() -> std::process::ExitCode {
    pgform::cli::main()
}
