/// A host change that failed, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A program is missing.
    #[error("cannot run `{program}`: {source}; install the Debian package {package}")]
    Missing {
        /// The program.
        program: String,
        /// Its package.
        package: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// A command failed.
    #[error("`{command}` failed: {stderr}{hint}")]
    Failed {
        /// The command line.
        command: String,
        /// What it printed.
        stderr: String,
        /// A hint (run as root, ...), possibly empty.
        hint: &'static str,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A value that must not reach a command line (it could inject syntax).
    #[error("invalid {what}: {value:?}")]
    Invalid {
        /// What it is.
        what: &'static str,
        /// The value.
        value: String,
    },
}
