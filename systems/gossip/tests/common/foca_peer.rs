//! The `foca` crate (a sans-IO SWIM without the Lifeguard extensions) driven over the same
//! simulated UDP as our nodes, so failure detection can be compared on the same network and
//! seeds. Identities are (address, generation); a member declared down renews itself with the
//! next generation and rejoins, as foca's documentation recommends.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foca::{AccumulatingRuntime, Config, Foca, Identity, OwnedNotification, PostcardCodec, Timer};
use rand010::SeedableRng;
use rand010::rngs::StdRng;
use serde::{Deserialize, Serialize};
use sim::world::{LinkConfig, NodeId, SimConfig, World};
use sim::{Env, Instant, UdpSocket};

use super::addr;

/// A foca identity: address plus a generation bumped on every rejoin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FocaId {
    /// Address.
    pub addr: SocketAddr,
    /// Generation.
    pub generation: u32,
}

impl Identity for FocaId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(FocaId { addr: self.addr, generation: self.generation.wrapping_add(1) })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// (time, observer index, member address) of every MemberDown notification.
pub type Downs = Arc<Mutex<Vec<(Instant, usize, SocketAddr)>>>;

/// A world of `node_count` foca nodes with `loss` on every link; every node announces itself
/// to node 0.
pub fn foca_cluster(seed: u64, node_count: usize, loss: f64) -> (World, Vec<NodeId>, Downs) {
    let mut config = SimConfig::new(seed);
    config.net.link = LinkConfig { loss, ..LinkConfig::default() };
    config.buggify = sim::world::BuggifyConfig::DISABLED;
    let world = World::new(config);
    let downs: Downs = Arc::new(Mutex::new(Vec::new()));
    let mut nodes = Vec::new();
    for index in 0..node_count {
        let downs = Arc::clone(&downs);
        let node = world.add_node_with(&format!("f{index}"), addr(index).ip(), move |env| {
            let downs = Arc::clone(&downs);
            async move { run_foca(env, index, node_count, downs).await }
        });
        nodes.push(node);
    }
    (world, nodes, downs)
}

type Timers = Vec<(Instant, u64, Timer<FocaId>)>;

async fn run_foca<E: Env>(env: E, index: usize, node_count: usize, downs: Downs) {
    let socket = env.bind_udp(addr(index)).await.expect("bind");
    let identity = FocaId { addr: addr(index), generation: 0 };
    let size = NonZeroU32::new(node_count as u32).expect("nodes");
    let rng = StdRng::seed_from_u64(rand::RngCore::next_u64(&mut env.rng()));
    let mut foca = Foca::new(identity, Config::new_lan(size), rng, PostcardCodec);
    let mut runtime = AccumulatingRuntime::new();
    let mut timers: Timers = Vec::new();
    let mut sequence = 0u64;
    if index != 0 {
        let seed = FocaId { addr: addr(0), generation: 0 };
        foca.announce(seed, &mut runtime).expect("announce");
    }
    let mut buffer = vec![0u8; 2048];
    loop {
        drain(&env, &socket, &mut runtime, &mut timers, &mut sequence, index, &downs).await;
        timers.sort_by_key(|(at, sequence, _)| (*at, *sequence));
        let deadline = timers.first().map_or(Instant::MAX, |(at, _, _)| *at);
        let wait = deadline.saturating_duration_since(env.now());
        match env.timeout(wait, socket.recv_from(&mut buffer)).await {
            Ok(Ok((length, _))) => {
                // Garbage is foca's to refuse; a refusal is not our failure.
                let _ = foca.handle_data(&buffer[..length], &mut runtime);
            }
            Ok(Err(_)) => env.sleep(Duration::from_millis(1)).await,
            Err(_) => {}
        }
        let now = env.now();
        while timers.first().is_some_and(|(at, _, _)| *at <= now) {
            let (_, _, timer) = timers.remove(0);
            let _ = foca.handle_timer(timer, &mut runtime);
        }
    }
}

async fn drain<E: Env>(
    env: &E,
    socket: &E::UdpSocket,
    runtime: &mut AccumulatingRuntime<FocaId>,
    timers: &mut Timers,
    sequence: &mut u64,
    index: usize,
    downs: &Downs,
) {
    while let Some((to, data)) = runtime.to_send() {
        let _ = socket.send_to(&data, to.addr).await;
    }
    while let Some((after, timer)) = runtime.to_schedule() {
        *sequence += 1;
        timers.push((env.now() + after, *sequence, timer));
    }
    while let Some(notification) = runtime.to_notify() {
        if let OwnedNotification::MemberDown(member) = notification {
            downs.lock().expect("lock").push((env.now(), index, member.addr));
        }
    }
}
