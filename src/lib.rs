//! The `sekisho` command line: administration, offline decisions and the demo.
//!
//! A thin layer over the crates that do the work (kanidm-style): argument parsing in
//! [`cli`], one module per command family in [`cmd`], and the gRPC client connection
//! in [`client`]. Integration tests in `tests/` use this library directly.

pub mod cli;
pub mod client;
pub mod cmd;
pub mod reference;
pub mod report;

/// How a command ended, mapped to the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 0: done, or the answer is yes (valid, allowed).
    Ok,
    /// 1: the answer is no (invalid policies, lint errors, a refused publish).
    No,
}
