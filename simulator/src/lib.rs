//! The municipality simulator (issue 6): synthetic cities, a workday driven through
//! the real gRPC APIs, and what-if comparisons of policy versions.
//!
//! Not built yet; `sekisho demo` is its predecessor.
