//! The I/O layer of coresocks, shared by the proxy and loadgen: every
//! system call the two make beyond std, glommio and socket2 (`sys`), and
//! what a core's tasks wait on and where the core sleeps (`events`: the
//! core's own io_uring, its timers, off-core work, streams, listeners and
//! stop signals).
//!
//! All of the project's `unsafe` lives here, each block with the reason it
//! is sound. Safe functions take descriptors as `BorrowedFd`/`AsFd`; a bare
//! descriptor number is accepted only by an `unsafe fn` whose contract says
//! what the caller promises.

pub mod cpus;
pub mod events;
pub mod sockmap;
pub mod sys;
