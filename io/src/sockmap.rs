//! The kernel-side relay: a BPF `sk_skb` stream-verdict program that sends
//! each segment a socket receives straight out of its peer socket, in the
//! softirq that received it, so a tunnel's bytes never wake the proxy.
//!
//! Four maps per core (`bpf(2)` through raw system calls; no toolchain,
//! no loader crate: the program is 35 instructions, assembled below):
//! - `peers` (HASH, socket cookie -> peer's cookie and the direction): who
//!   gets a socket's bytes;
//! - `counters` (PERCPU_ARRAY, direction -> bytes): what the program moved
//!   each way, read when the metrics are scraped;
//! - `sockets` (SOCKHASH, cookie -> socket): what the program redirects to,
//!   with no program of its own;
//! - `verdict` (SOCKHASH, cookie -> socket): the map the program is
//!   attached to; a socket's bytes go through the program once it is here.
//!
//! Why two socket maps: a tunnel's two sockets cannot enter one map at
//! once, and a segment that arrived for the first one before the second
//! was there would be dropped (`bpf_sk_redirect_hash` drops when the peer
//! is missing, after TCP acknowledged it). So both sockets first join
//! `sockets`, where nothing reads them, and only then `verdict`. Each
//! insert holds the socket's lock, so a segment that arrives meanwhile waits
//! in the socket's backlog and meets the program when the lock is let go.
//! What the socket had queued before is handed to the program by a
//! wake-up (`SO_RCVLOWAT`, whose setter signals a socket that has data:
//! `tcp_set_rcvlowat` calls `tcp_data_ready`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `enum bpf_cmd`, `bpf_map_type`, `bpf_prog_type` and `bpf_attach_type`
/// values (linux/bpf.h; the libc crate has none of them).
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_MAP_TYPE_SOCKHASH: u32 = 18;
const BPF_PROG_TYPE_SK_SKB: u32 = 14;
const BPF_SK_SKB_STREAM_VERDICT: u32 = 5;
const BPF_F_NO_PREALLOC: u32 = 1;
const BPF_NOEXIST: u64 = 1;
const BPF_PSEUDO_MAP_FD: u8 = 1;

/// Helper function numbers (`enum bpf_func_id`).
const FUNC_MAP_LOOKUP_ELEM: i32 = 1;
const FUNC_GET_SOCKET_COOKIE: i32 = 46;
const FUNC_SK_REDIRECT_HASH: i32 = 72;

/// `SK_PASS`: leave the segment to the socket itself (its owner reads it).
const SK_PASS: i32 = 1;
/// `SK_DROP`: free the segment.
const SK_DROP: i32 = 0;

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Insn {
    code: u8,
    /// dst_reg in the low nibble, src_reg in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R6: u8 = 6;
const R10: u8 = 10;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

fn mov64_reg(dst: u8, src: u8) -> Insn {
    insn(0xbf, dst, src, 0, 0) // BPF_ALU64 | BPF_MOV | BPF_X
}

fn mov64_imm(dst: u8, imm: i32) -> Insn {
    insn(0xb7, dst, 0, 0, imm) // BPF_ALU64 | BPF_MOV | BPF_K
}

fn add64_imm(dst: u8, imm: i32) -> Insn {
    insn(0x07, dst, 0, 0, imm) // BPF_ALU64 | BPF_ADD | BPF_K
}

fn store_u64(dst: u8, off: i16, src: u8) -> Insn {
    insn(0x7b, dst, src, off, 0) // BPF_STX | BPF_MEM | BPF_DW
}

fn store_u32(dst: u8, off: i16, src: u8) -> Insn {
    insn(0x63, dst, src, off, 0) // BPF_STX | BPF_MEM | BPF_W
}

/// `lock *(u64 *)(dst + off) += src`.
fn atomic_add_u64(dst: u8, off: i16, src: u8) -> Insn {
    insn(0xdb, dst, src, off, 0) // BPF_STX | BPF_ATOMIC | BPF_DW, BPF_ADD
}

fn load_u64(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x79, dst, src, off, 0) // BPF_LDX | BPF_MEM | BPF_DW
}

fn load_u32(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x61, dst, src, off, 0) // BPF_LDX | BPF_MEM | BPF_W
}

fn call(helper: i32) -> Insn {
    insn(0x85, 0, 0, 0, helper) // BPF_JMP | BPF_CALL
}

fn jump_if_zero(dst: u8, skip: i16) -> Insn {
    insn(0x15, dst, 0, skip, 0) // BPF_JMP | BPF_JEQ | BPF_K, imm 0
}

fn exit() -> Insn {
    insn(0x95, 0, 0, 0, 0) // BPF_JMP | BPF_EXIT
}

/// `dst = map` (BPF_LD | BPF_IMM | BPF_DW with a map fd the kernel
/// replaces by the map): two instruction slots.
fn load_map(dst: u8, map: BorrowedFd<'_>) -> [Insn; 2] {
    [
        insn(0x18, dst, BPF_PSEUDO_MAP_FD, 0, map.as_raw_fd()),
        insn(0, 0, 0, 0, 0),
    ]
}

/// The verdict program, in the C it would be compiled from:
///
/// ```c
/// if (skb->len == 0) return SK_DROP;  /* a bare FIN: no data to move */
/// u64 me = bpf_get_socket_cookie(skb);
/// struct peer *peer = bpf_map_lookup_elem(&peers, &me);
/// if (!peer) return SK_PASS;          /* not (or no longer) a tunnel */
/// u64 key = peer->cookie;
/// u32 way = peer->way;
/// u64 *moved = bpf_map_lookup_elem(&counters, &way);
/// if (moved) __sync_fetch_and_add(moved, skb->len);
/// return bpf_sk_redirect_hash(skb, &sockets, &key, 0);  /* peer's egress */
/// ```
///
/// Why the bare FIN is dropped: the proxy passes FINs on itself once the
/// data before them has left; redirected, an empty segment would reach
/// the peer's send path after that shutdown and fail there with EPIPE,
/// which the kernel reports as the peer socket's error.
fn verdict_program(
    peers: BorrowedFd<'_>,
    counters: BorrowedFd<'_>,
    sockets: BorrowedFd<'_>,
) -> Vec<Insn> {
    let mut p = vec![
        load_u32(R0, R1, 0),  // __sk_buff.len
        jump_if_zero(R0, 31), // to SK_DROP
        mov64_reg(R6, R1),
        call(FUNC_GET_SOCKET_COOKIE),
        store_u64(R10, -8, R0),
    ];
    p.extend(load_map(R1, peers));
    p.extend([
        mov64_reg(R2, R10),
        add64_imm(R2, -8),
        call(FUNC_MAP_LOOKUP_ELEM),
        jump_if_zero(R0, 20), // to SK_PASS
        load_u64(R1, R0, 0),
        store_u64(R10, -16, R1),
        load_u64(R1, R0, 8),
        store_u32(R10, -20, R1),
    ]);
    p.extend(load_map(R1, counters));
    p.extend([
        mov64_reg(R2, R10),
        add64_imm(R2, -20),
        call(FUNC_MAP_LOOKUP_ELEM),
        jump_if_zero(R0, 2), // past the count
        load_u32(R1, R6, 0),
        atomic_add_u64(R0, 0, R1),
        mov64_reg(R1, R6),
    ]);
    p.extend(load_map(R2, sockets));
    p.extend([
        mov64_reg(R3, R10),
        add64_imm(R3, -16),
        mov64_imm(R4, 0),
        call(FUNC_SK_REDIRECT_HASH),
        exit(),
        mov64_imm(R0, SK_PASS),
        exit(),
        mov64_imm(R0, SK_DROP),
        exit(),
    ]);
    p
}

/// `bpf(cmd, attr, size)`.
///
/// # Safety
/// `attr` must be the `union bpf_attr` layout `cmd` reads, and every
/// pointer in it must be valid for what the kernel reads or writes there
/// during the call.
unsafe fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: the caller vouches for the attribute's layout and pointers;
    // the size passed is the struct's own.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// The new descriptor a BPF_MAP_CREATE or BPF_PROG_LOAD returned.
fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("bpf(2) returned no descriptor"))?;
    // SAFETY: bpf(2) just created this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

fn create_map(
    map_type: u32,
    (key_size, value_size): (u32, u32),
    max_entries: u32,
    flags: u32,
    name: &str,
) -> io::Result<OwnedFd> {
    let mut attr = MapCreate {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_flags: flags,
        ..MapCreate::default()
    };
    let n = name.len().min(15);
    attr.map_name[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: MapCreate is BPF_MAP_CREATE's layout up to map_name, and it
    // holds no pointers.
    owned(unsafe { bpf(BPF_MAP_CREATE, &mut attr) }?)
}

#[repr(C)]
struct Elem {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// One element command (BPF_MAP_UPDATE_ELEM, _DELETE_ELEM,
/// _LOOKUP_ELEM) on `map`.
///
/// # Safety
/// `key` must point at a live key of the map's key size, and `value` be 0
/// (delete) or point at live memory of what `cmd` reads or writes there
/// (the value size; for a per-CPU lookup, that size times the possible
/// CPUs), for the whole call.
unsafe fn elem(
    cmd: libc::c_long,
    map: BorrowedFd<'_>,
    key: u64,
    value: u64,
    flags: u64,
) -> io::Result<()> {
    let mut attr = Elem {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key,
        value,
        flags,
    };
    // SAFETY: Elem is the element commands' layout; the caller vouches for
    // the pointers.
    unsafe { bpf(cmd, &mut attr) }.map(drop)
}

/// Adds `key -> value` to a map whose key is 8 bytes and whose value is
/// `V`'s size (the maps this module makes).
fn update<V: Copy>(map: BorrowedFd<'_>, key: u64, value: &V) -> io::Result<()> {
    let (key, value) = (&key as *const u64 as u64, value as *const V as u64);
    // SAFETY: key and value point at live values of the map's key and
    // value sizes for the whole call.
    unsafe { elem(BPF_MAP_UPDATE_ELEM, map, key, value, BPF_NOEXIST) }
}

fn delete(map: BorrowedFd<'_>, key: u64) -> io::Result<()> {
    // SAFETY: key points at an 8-byte local that outlives the call.
    unsafe { elem(BPF_MAP_DELETE_ELEM, map, &key as *const u64 as u64, 0, 0) }
}

#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

fn load_program(insns: &[Insn]) -> io::Result<OwnedFd> {
    const LICENSE: &[u8] = b"Dual MIT/GPL\0";
    let mut log = vec![0u8; 0];
    for log_level in [0, 1] {
        if log_level == 1 {
            log = vec![0u8; 64 * 1024];
        }
        let mut attr = ProgLoad {
            prog_type: BPF_PROG_TYPE_SK_SKB,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: LICENSE.as_ptr() as u64,
            log_level,
            log_size: log.len() as u32,
            log_buf: if log.is_empty() {
                0
            } else {
                log.as_mut_ptr() as u64
            },
            expected_attach_type: BPF_SK_SKB_STREAM_VERDICT,
            ..ProgLoad::default()
        };
        attr.prog_name[..8].copy_from_slice(b"coresock");
        // SAFETY: ProgLoad is BPF_PROG_LOAD's layout up to
        // expected_attach_type; insns, license and log_buf point at live
        // memory of the stated sizes for the whole call.
        match unsafe { bpf(BPF_PROG_LOAD, &mut attr) } {
            Ok(fd) => return owned(fd),
            // Load again with the verifier's log, to say why.
            Err(_) if log_level == 0 => continue,
            Err(e) => {
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                let why = String::from_utf8_lossy(&log[..end]);
                let last = why.lines().rev().find(|l| !l.trim().is_empty());
                return Err(io::Error::new(
                    e.kind(),
                    format!("{e}; verifier: {}", last.unwrap_or("no log")),
                ));
            }
        }
    }
    unreachable!("the second load returns")
}

#[repr(C)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn attach_verdict(map: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = ProgAttach {
        target_fd: map.as_raw_fd() as u32,
        attach_bpf_fd: program.as_raw_fd() as u32,
        attach_type: BPF_SK_SKB_STREAM_VERDICT,
        attach_flags: 0,
        replace_bpf_fd: 0,
    };
    // SAFETY: ProgAttach is BPF_PROG_ATTACH's layout; it holds no pointers.
    unsafe { bpf(BPF_PROG_ATTACH, &mut attr) }.map(drop)
}

/// A core's maps and verdict program. Dropping it detaches the program and
/// frees the maps once no socket is left in them.
pub struct SockMap {
    peers: OwnedFd,
    counters: OwnedFd,
    sockets: OwnedFd,
    verdict: OwnedFd,
    _program: OwnedFd,
}

/// A `peers` value: where a socket's bytes go, and which way that is.
#[repr(C)]
#[derive(Clone, Copy)]
struct Peer {
    cookie: u64,
    way: u64,
}

/// Which way a joined socket's bytes go, as the byte counters index it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// From the first socket of [`SockMap::join`] to the second.
    FirstToSecond = 0,
    SecondToFirst = 1,
}

/// The bytes a core's program moved each way, readable from any thread
/// (the metrics endpoint reads them when scraped).
pub struct Counters {
    map: OwnedFd,
    /// The kernel keeps one counter per possible CPU.
    cpus: usize,
}

impl Counters {
    /// Bytes moved `way` since the maps were made: the sum over CPUs.
    pub fn read(&self, way: Way) -> io::Result<u64> {
        let key = way as u32;
        let mut values = vec![0u64; self.cpus];
        let (key, value) = (&key as *const u32 as u64, values.as_mut_ptr() as u64);
        // SAFETY: key points at a 4-byte local (the array's key size) and
        // value at 8 bytes for each possible CPU, which is what a per-CPU
        // lookup writes.
        unsafe { elem(BPF_MAP_LOOKUP_ELEM, self.map.as_fd(), key, value, 0) }?;
        Ok(values.iter().sum())
    }
}

/// How many CPUs the kernel may ever bring up (`/sys/devices/system/cpu/
/// possible`, "0-3" or "0,2-5"): per-CPU maps hold a value for each.
fn possible_cpus() -> io::Result<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let last = text
        .trim()
        .split([',', '-'])
        .filter_map(|n| n.parse::<usize>().ok())
        .max()
        .ok_or_else(|| io::Error::other(format!("unreadable possible CPUs {text:?}")))?;
    Ok(last + 1)
}

/// A tunnel's two sockets, spliced in the kernel until [`SockMap::part`].
#[derive(Debug)]
pub struct Joined {
    cookies: [u64; 2],
}

impl SockMap {
    /// Maps for up to `tunnels` tunnels at once and the program that reads
    /// them. Fails where the kernel lacks sockmap (`CONFIG_BPF_STREAM_PARSER`)
    /// or the process may not load BPF programs (CAP_BPF and CAP_NET_ADMIN).
    pub fn new(tunnels: u32) -> io::Result<SockMap> {
        let sockets_max = tunnels.saturating_mul(2).max(2);
        let what = |step: &'static str| {
            move |e: io::Error| io::Error::new(e.kind(), format!("{step}: {e}"))
        };
        let peer_size = std::mem::size_of::<Peer>() as u32;
        let peers = create_map(
            BPF_MAP_TYPE_HASH,
            (8, peer_size),
            sockets_max,
            BPF_F_NO_PREALLOC,
            "coresocks_peer",
        )
        .map_err(what("creating the peers map"))?;
        let counters = create_map(BPF_MAP_TYPE_PERCPU_ARRAY, (4, 8), 2, 0, "coresocks_byte")
            .map_err(what("creating the byte counters"))?;
        let sockhash = |name| {
            create_map(BPF_MAP_TYPE_SOCKHASH, (8, 8), sockets_max, 0, name)
                .map_err(what("creating a SOCKHASH"))
        };
        let sockets = sockhash("coresocks_sock")?;
        let verdict = sockhash("coresocks_verd")?;
        let program = verdict_program(peers.as_fd(), counters.as_fd(), sockets.as_fd());
        let program = load_program(&program).map_err(what("loading the sk_skb verdict program"))?;
        attach_verdict(verdict.as_fd(), program.as_fd())
            .map_err(what("attaching the verdict program"))?;
        Ok(SockMap {
            peers,
            counters,
            sockets,
            verdict,
            _program: program,
        })
    }

    /// The byte counters, for another thread to read.
    pub fn counters(&self) -> io::Result<Counters> {
        Ok(Counters {
            map: self.counters.try_clone()?,
            cpus: possible_cpus()?,
        })
    }

    /// From now on each socket's received bytes leave through the other
    /// one, including those it has queued. Both must be established TCP
    /// sockets in no other map. On error nothing is left joined.
    ///
    /// The caller must not read either socket afterwards: what the program
    /// leaves to the socket (nothing, while the pair is joined) would be
    /// the only thing a read returns.
    pub fn join(&self, a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> io::Result<Joined> {
        let cookies = [crate::sys::socket_cookie(a)?, crate::sys::socket_cookie(b)?];
        let joined = Joined { cookies };
        let steps = || -> io::Result<()> {
            let peer = |cookie, way: Way| Peer {
                cookie,
                way: way as u64,
            };
            update(
                self.peers.as_fd(),
                cookies[0],
                &peer(cookies[1], Way::FirstToSecond),
            )?;
            update(
                self.peers.as_fd(),
                cookies[1],
                &peer(cookies[0], Way::SecondToFirst),
            )?;
            for map in [&self.sockets, &self.verdict] {
                update(map.as_fd(), cookies[0], &(a.as_raw_fd() as u64))?;
                update(map.as_fd(), cookies[1], &(b.as_raw_fd() as u64))?;
            }
            crate::sys::signal_if_readable(a)?;
            crate::sys::signal_if_readable(b)
        };
        if let Err(e) = steps() {
            self.part(&joined);
            return Err(e);
        }
        Ok(joined)
    }

    /// Forgets a pair: its sockets leave the maps (closing them would do
    /// that too) and their peer entries go. Bytes the program already
    /// handed to a socket's send path are lost with it, so call this only
    /// when both directions are done or the tunnel is failing.
    pub fn part(&self, joined: &Joined) {
        for cookie in joined.cookies {
            let _ = delete(self.verdict.as_fd(), cookie);
            let _ = delete(self.sockets.as_fd(), cookie);
            let _ = delete(self.peers.as_fd(), cookie);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_is_the_instructions_its_comment_describes() {
        let fake = std::fs::File::open("/dev/null").expect("/dev/null");
        let p = verdict_program(fake.as_fd(), fake.as_fd(), fake.as_fd());
        assert_eq!(p.len(), 35);
        let lands = |at: usize| p[at + 1 + p[at].off as usize];
        let jumps: Vec<usize> = (0..p.len()).filter(|&i| p[i].code == 0x15).collect();
        assert_eq!(jumps.len(), 3);
        // An empty segment is dropped; one from a socket with no peer
        // passes; a missing counter skips only the count.
        assert_eq!(lands(jumps[0]), mov64_imm(R0, SK_DROP));
        assert_eq!(lands(jumps[1]), mov64_imm(R0, SK_PASS));
        assert_eq!(lands(jumps[2]), mov64_reg(R1, R6));
        assert_eq!(p.iter().filter(|i| i.code == 0x95).count(), 3);
        let maps: Vec<usize> = (0..p.len()).filter(|&i| p[i].code == 0x18).collect();
        assert_eq!(maps, [5, 15, 24]);
    }
}
