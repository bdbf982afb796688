//! Process-wide settings owned by the binary: the file-descriptor limit, the file-creation
//! mask of the server, SIGPIPE for CLI commands, the one TLS crypto provider, and handing
//! freed heap back to the kernel after start-up. With the
//! hand-over's adoption of inherited sockets, the only `unsafe` outside the plugin cache:
//! each call is a plain libc call with no pointers kept.

/// Installs ring as the process's rustls crypto provider (an error means one is installed
/// already, which is as good). Every HTTP client and TLS user needs one: call before
/// building any.
pub fn crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Returns the heap memory that start-up freed to the kernel (glibc's `malloc_trim`): the
/// compilation of built-in plugins on a first start (cranelift, on wasmtime's compile
/// threads, each with its own malloc arena) frees megabytes that glibc would otherwise
/// keep resident for the life of the process. A no-op on other C libraries.
pub fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes no pointer; it only walks glibc's own arenas.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, so the server's connection caps (not
/// the default 1024 soft limit) decide how many sockets it holds. Returns the new soft limit.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by reference.
    #[allow(unsafe_code)]
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            lim = raised;
        }
    }
    Ok(lim.rlim_cur)
}

/// Makes every file and directory the server creates private to its user (0600/0700),
/// whatever the inherited umask: the store, keys, caches, build dirs and logs hold state.
pub fn private_umask() {
    // SAFETY: umask has no memory effects.
    #[allow(unsafe_code)]
    unsafe {
        libc::umask(0o077);
    }
}

/// Restores the default SIGPIPE action for CLI commands, so `orca status | head` ends
/// quietly when `head` exits instead of panicking in `println!` (Rust ignores SIGPIPE).
pub fn default_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_DFL installs no handler.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
