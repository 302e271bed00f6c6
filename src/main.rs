fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    koala::cli::run()
}

/// glibc gives a multi-threaded process up to eight malloc arenas per core,
/// and memory freed into one arena stays with it: in a 1M-member resync
/// with a full replace, about a third of the peak RSS was memory idle in
/// arenas. koala has few threads (tokio's workers, the store's), so four
/// arenas keep that peak under 150 MB; two kept it lower (133 MB) but cost
/// the ingest path about a fifth more CPU per webhook in contention
/// (measured with the benchmark).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}
