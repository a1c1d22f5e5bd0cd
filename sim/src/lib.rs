//! Deterministic runtime for Ghostmesh: the `Env` traits every system is written against, and
//! the backends that implement them.
//!
//! Map:
//! - `env`: the `Env`, `UdpSocket`, `TcpListener`, `TcpStream` and `File` traits.
//! - `time`: the backend-independent monotonic `Instant` and `Env::timeout`.
//! - `task`: `TaskHandle`, the join handle of `Env::spawn`.
//! - `faults`: `Faults`, the BUGGIFY hook and planted bug a driver hands a system's sans-IO
//!   core (each system names its sites and bugs).
//! - `world`: the deterministic backend: seeded executor with virtual time, nodes, a network
//!   model (latency, loss, duplication, reordering, partitions), a disk model (page cache over
//!   durable state, torn writes, I/O faults), skewed wall clocks, and the trace hash.
//! - `tokio_env` (feature `tokio`): real time, sockets and files on multi-threaded tokio.
//! - `turmoil_env` (feature `turmoil`): network and clock on turmoil's hosts, disk from our model.
//!
//! Invariant: outside `tokio_env` nothing here reads the OS clock, OS randomness, spawns a
//! thread or touches a real socket or file. A `World` is a value: many run in parallel threads
//! of one process, and there is no process-global simulator state.

pub mod env;
pub mod faults;
pub mod task;
pub mod time;
pub mod workloads;
pub mod world;

#[cfg(feature = "tokio")]
pub mod tokio_env;
#[cfg(feature = "turmoil")]
pub mod turmoil_env;

pub use env::{Env, File, OpenOptions, TcpListener, TcpStream, UdpSocket};
pub use task::{JoinError, TaskHandle};
pub use time::{Elapsed, Instant};
