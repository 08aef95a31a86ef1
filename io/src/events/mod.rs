//! What a core's tasks wait on, and where the core sleeps: the core's own
//! io_uring (`ring`: the event ring, its driver and its watches), timers
//! on it (`timer`), blocking work whose answer comes back through it
//! (`offcore`), and the TCP streams, listeners and datagram sockets that
//! wait there (`stream`, `listener`, `datagram`). Apart from the proxy's
//! runtime, which starts a ring per core, so that loadgen's executors wait
//! the same way.

mod datagram;
mod listener;
pub mod offcore;
pub mod ring;
mod stream;
pub mod timer;

pub use datagram::DatagramWait;
pub use listener::Listener;
pub use offcore::{blocking, blocking_on, Pool};
pub use ring::{counted, root, spawn, EventRing, Readiness, RingSetup, Watch};
pub use stream::Stream;
pub use timer::{sleep, Timer};
