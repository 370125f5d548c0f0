//! Cross-process scenarios: every channel here spans two real processes.
//!
//! The test binary is its own peer: the parent re-executes it with `RBUF_CHILD=<role>`
//! and `RBUF_SOCK=<path>`, and the child plays that role (see `child_main`). Runs without
//! the libtest harness (`harness = false`) so the child can take over `main`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rbuf::connect::{self, Config, Listener};
use rbuf::ring::raw;
use rbuf::{DataArea, Error, Extent, IoRec, Master, Mode, Multicast, PagePolicy, Peer, Pool};

const SLOTS: usize = 256;
const STREAM: u64 = 1_000_000;
const AREA_BYTES: usize = 8 << 20;
const SLOT_BYTES: u32 = 2048;
/// Forged returns the hostile receiver sends before it corrupts its head count, and junk
/// IOrecs the hostile originator sends before it forges stamps and counts.
const HOSTILE_IORECS: u64 = 40;
const WAIT: Option<Duration> = Some(Duration::from_secs(20));

// ---------- payload with a checksum ----------

/// Length of message `seq`: 24 to 1520 bytes, a multiple of 8.
fn msg_len(seq: u64) -> usize {
    24 + (seq.wrapping_mul(2_654_435_761) % 188) as usize * 8
}

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `buf` as message `seq`: seq, checksum of the rest, pseudo-random words.
fn fill(seq: u64, buf: &mut [u8]) {
    let mut sum = 0u64;
    for (i, w) in buf[16..].chunks_exact_mut(8).enumerate() {
        let v = mix(seq ^ ((i as u64) << 40));
        w.copy_from_slice(&v.to_le_bytes());
        sum = sum.rotate_left(5) ^ v;
    }
    buf[0..8].copy_from_slice(&seq.to_le_bytes());
    buf[8..16].copy_from_slice(&sum.to_le_bytes());
}

/// Checks a message read from shared memory; returns its sequence number.
fn verify(buf: &[u8]) -> Result<u64, String> {
    let seq = u64::from_le_bytes(buf[0..8].try_into().unwrap());
    let want = u64::from_le_bytes(buf[8..16].try_into().unwrap());
    let sum = buf[16..].chunks_exact(8).fold(0u64, |s, w| {
        s.rotate_left(5) ^ u64::from_le_bytes(w.try_into().unwrap())
    });
    if sum != want || buf.len() != msg_len(seq) {
        return Err(format!(
            "message {seq}: checksum {sum:#x} != {want:#x} or bad length {}",
            buf.len()
        ));
    }
    Ok(seq)
}

// ---------- process plumbing ----------

fn sock_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rbuf-xp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn spawn(role: &str, sock: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .env("RBUF_CHILD", role)
        .env("RBUF_SOCK", sock)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child")
}

fn finish(child: Child) -> (ExitStatus, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn connect_retry(sock: &Path, cfg: Config, cap: usize) -> connect::Endpoint {
    let start = Instant::now();
    loop {
        match connect::connect(sock, cfg.clone(), cap) {
            Ok(e) => return e,
            Err(e) if start.elapsed() < Duration::from_secs(10) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("connect: {e}"),
        }
    }
}

// ---------- children ----------

/// TMM receiver: verifies `STREAM` messages in order, returns every buffer.
fn child_tmm_receiver(sock: &Path) {
    let mut peer = connect_retry(sock, Config::receiver(Mode::Tmm, SLOTS), 0)
        .into_peer()
        .unwrap();
    let mut recs = [IoRec::default(); 32];
    let mut next = 0u64;
    let mut buf = vec![0u8; 2048];
    while next < STREAM {
        let n = peer.recv(&mut recs).unwrap();
        if n == 0 {
            assert!(
                peer.link().wait_incoming(WAIT).unwrap(),
                "stalled at {next}"
            );
            continue;
        }
        for rec in &recs[..n] {
            let len = peer.area().gather(rec.extents(), &mut buf).unwrap();
            assert_eq!(verify(&buf[..len]).unwrap(), next);
            next += 1;
        }
        let mut sent = 0;
        while sent < n {
            sent += peer.send(&recs[sent..n]).unwrap();
            if sent < n {
                peer.link().wait_space(n - sent, WAIT).unwrap();
            }
        }
    }
    println!("verified {next}");
}

/// RMM originator: creates the data area, fills `STREAM` posted buffers.
fn child_rmm_originator(sock: &Path) {
    let area = Arc::new(DataArea::create(AREA_BYTES, PagePolicy::PreferHuge).unwrap());
    let mut peer = connect_retry(sock, Config::originator(Mode::Rmm, SLOTS, area.clone()), 0)
        .into_peer()
        .unwrap();
    let mut recs = [IoRec::default(); 32];
    let mut seq = 0u64;
    while seq < STREAM {
        let n = peer.recv(&mut recs).unwrap();
        if n == 0 {
            assert!(
                peer.link().wait_incoming(WAIT).unwrap(),
                "no empty buffers at {seq}"
            );
            continue;
        }
        for rec in &mut recs[..n] {
            let e = rec.extents()[0];
            let len = msg_len(seq);
            assert!(len <= e.len() as usize);
            // SAFETY: the master lent this empty buffer to us; nobody else writes it until
            // we send it back, and no other view of it exists here.
            let bytes = unsafe { area.bytes_mut(Extent::new(e.offset(), len as u32)) }.unwrap();
            fill(seq, bytes);
            rec.extents_mut()[0] = Extent::new(e.offset(), len as u32);
            seq += 1;
        }
        let mut sent = 0;
        while sent < n {
            sent += peer.send(&recs[sent..n]).unwrap();
            if sent < n {
                peer.link().wait_space(n - sent, WAIT).unwrap();
            }
        }
    }
    // Leave at once: what we published stays readable for the master after we exit.
    println!("filled {seq}");
}

/// Multicast receiver: `stall` never reads; the others verify and return.
fn child_multicast_receiver(sock: &Path, stall: bool) {
    let mut peer = connect_retry(sock, Config::receiver(Mode::Tmm, 64), 0)
        .into_peer()
        .unwrap();
    if stall {
        println!("stalling");
        std::thread::sleep(Duration::from_secs(120));
        return;
    }
    let mut recs = [IoRec::default(); 32];
    let mut buf = vec![0u8; 2048];
    let mut count = 0u64;
    let mut next = 0u64;
    loop {
        let n = match peer.recv(&mut recs) {
            Ok(n) => n,
            Err(Error::PeerGone) => break,
            Err(e) => panic!("{e}"),
        };
        if n == 0 {
            match peer.link().wait_incoming(WAIT) {
                Ok(true) => continue,
                Ok(false) | Err(Error::PeerGone) => break,
                Err(e) => panic!("{e}"),
            }
        }
        for rec in &recs[..n] {
            let len = peer.area().gather(rec.extents(), &mut buf).unwrap();
            assert_eq!(verify(&buf[..len]).unwrap(), next);
            next += 1;
            count += 1;
        }
        let mut sent = 0;
        while sent < n {
            sent += peer.send(&recs[sent..n]).unwrap();
        }
    }
    println!("verified {count}");
}

/// A TMM receiver that takes some buffers and then waits to be killed.
fn child_victim_of_kill(sock: &Path) {
    let mut peer = connect_retry(sock, Config::receiver(Mode::Tmm, SLOTS), 0)
        .into_peer()
        .unwrap();
    let mut recs = [IoRec::default(); 32];
    let mut held = 0;
    while held < 100 {
        held += peer.recv(&mut recs).unwrap();
        peer.link().wait_incoming(WAIT).unwrap();
    }
    println!("holding {held}");
    std::thread::sleep(Duration::from_secs(120));
}

/// A hostile TMM receiver: returns random IOrecs and scribbles random counts.
fn child_hostile_receiver(sock: &Path) {
    let mut peer = connect_retry(sock, Config::receiver(Mode::Tmm, SLOTS), 0)
        .into_peer()
        .unwrap();
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut recs = [IoRec::default(); 32];
    // Phase 1: HOSTILE_IORECS forged returns (tags that name no buffer of the pool),
    // then wait until the victim has taken them all.
    for _ in 0..HOSTILE_IORECS {
        rng = mix(rng);
        let _ = peer.recv(&mut recs);
        let tag = (rng >> 48) | (1 << 20);
        let mut rec =
            IoRec::from_extents(tag, &[Extent::new(rng as u32, (rng >> 32) as u32)]).unwrap();
        rec.set_flags(rng as u16);
        peer.send(&[rec]).unwrap();
    }
    assert!(peer.link().wait_space(SLOTS, WAIT).unwrap());
    // Phase 2: corrupt head counts, until the victim (which evicts us) kills us.
    let (out_memory, _) = peer.link().own_memory();
    loop {
        rng = mix(rng);
        raw::store_head(out_memory, rng);
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A hostile TMM originator (master): sends random IOrecs through the ring (properly
/// stamped), then forges stamps, slots and head counts.
fn child_hostile_originator(sock: &Path) {
    let area = Arc::new(DataArea::create(1 << 20, PagePolicy::Shmem).unwrap());
    let mut master = connect_retry(sock, Config::originator(Mode::Tmm, SLOTS, area.clone()), 0)
        .into_master()
        .unwrap();
    let mut rng = 0xfeed_f00du64;
    // Phase 1: junk IOrecs, pushed past the master's checks; wait until all are taken.
    let junk: Vec<IoRec> = (0..HOSTILE_IORECS)
        .map(|_| {
            rng = mix(rng);
            IoRec::from_extents(rng, &[Extent::new(rng as u32, (rng >> 40) as u32)]).unwrap()
        })
        .collect();
    assert_eq!(master.link().push(&junk).unwrap(), junk.len());
    assert!(master.link().wait_space(SLOTS, WAIT).unwrap());
    // Phase 2: random stamps, stamped random slots, random heads.
    let (out_memory, _) = master.link().own_memory();
    for i in 0..4000u64 {
        if i % 16 == 5 {
            raw::store_stamp(out_memory, SLOTS, i, rng as u32);
        }
        rng = mix(rng);
        if i % 4 == 0 {
            raw::store_head(out_memory, rng % 1024);
        } else {
            let rec =
                IoRec::from_extents(rng, &[Extent::new(rng as u32, (rng >> 40) as u32)]).unwrap();
            raw::store_slot(out_memory, SLOTS, i, rec);
            raw::store_head(out_memory, i % SLOTS as u64);
        }
    }
    println!("hostile done");
    std::thread::sleep(Duration::from_secs(120));
}

/// A receiver that tries to write the data area it was given read-only; it must not be
/// able to. Each attempt is reported; the last one faults and kills this process.
fn child_readonly_writer(sock: &Path) {
    let peer = connect_retry(sock, Config::receiver(Mode::Tmm, SLOTS), 0)
        .into_peer()
        .unwrap();
    let area = peer.area().clone();
    assert!(!area.is_writable());
    match area.write(0, b"x") {
        Err(e) => println!("library refused: {e}"),
        Ok(()) => println!("library allowed a write"),
    }
    // The kernel, asked directly: a writable mapping of the read-only fd, and a re-open of
    // the memfd read-write through /proc, must both be refused.
    let path = format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&area.fd())
    );
    for (what, flags) in [
        ("O_RDONLY", rustix::fs::OFlags::RDONLY),
        ("O_RDWR", rustix::fs::OFlags::RDWR),
    ] {
        let fd = rustix::fs::open(path.as_str(), flags, rustix::fs::Mode::empty()).unwrap();
        // SAFETY: a fresh mapping attempt at an address of the kernel's choosing; it
        // aliases nothing and is unmapped at once if it succeeds.
        let r = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                area.len(),
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                &fd,
                0,
            )
        };
        match r {
            Ok(p) => {
                println!("kernel allowed a writable mapping via {what}");
                // SAFETY: the mapping made just above.
                unsafe { rustix::mm::munmap(p, area.len()).unwrap() };
            }
            Err(e) => println!("kernel refused mapping via {what}: {e}"),
        }
    }
    // SAFETY: deliberately violates the read-only mapping to show the kernel stops it: the
    // process dies of SIGSEGV before the write lands.
    let r = unsafe {
        rustix::mm::mprotect(
            area.as_ptr().cast(),
            area.len(),
            rustix::mm::MprotectFlags::READ | rustix::mm::MprotectFlags::WRITE,
        )
    };
    println!("mprotect to writable: {r:?}");
    println!("writing through the read-only mapping");
    // SAFETY: as above, a deliberate write to a read-only page; it faults.
    unsafe { std::ptr::write_volatile(area.as_ptr(), 0x66) };
    println!("write went through");
}

fn child_main(role: &str, sock: &Path) {
    match role {
        "tmm-receiver" => child_tmm_receiver(sock),
        "rmm-originator" => child_rmm_originator(sock),
        "mc-receiver" => child_multicast_receiver(sock, false),
        "mc-stalled" => child_multicast_receiver(sock, true),
        "kill-victim" => child_victim_of_kill(sock),
        "hostile-receiver" => child_hostile_receiver(sock),
        "hostile-originator" => child_hostile_originator(sock),
        "readonly-writer" => child_readonly_writer(sock),
        other => panic!("unknown child role {other}"),
    }
}

// ---------- scenarios (parent side) ----------

fn send_all(master: &mut Master, pool: &mut Pool, recs: &[IoRec]) {
    let mut sent = 0;
    while sent < recs.len() {
        sent += master.send(pool, &recs[sent..]).unwrap();
        if sent < recs.len() {
            master.link().wait_space(recs.len() - sent, WAIT).unwrap();
        }
    }
}

fn fill_buffers(pool: &mut Pool, area: &DataArea, seq: &mut u64, out: &mut Vec<IoRec>, max: usize) {
    out.clear();
    while out.len() < max {
        let Ok(id) = pool.alloc(SLOT_BYTES as usize) else {
            break;
        };
        let len = msg_len(*seq);
        let e = Extent::new(pool.extent(id).offset(), len as u32);
        // SAFETY: buffer `id` was just allocated: only this code holds it until sent.
        fill(*seq, unsafe { area.bytes_mut(e) }.unwrap());
        out.push(IoRec::single(u64::from(id), e));
        *seq += 1;
    }
}

/// A TMM originator (master) in this process and a child playing `role` as its
/// receiver: the data area, the pool over it, the master's end, and the child.
struct TmmParent {
    child: Child,
    area: Arc<DataArea>,
    pool: Pool,
    master: Master,
}

fn tmm_parent(name: &str, role: &str, area_bytes: usize, policy: PagePolicy) -> TmmParent {
    let sock = sock_path(name);
    let listener = Listener::bind(&sock).unwrap();
    let child = spawn(role, &sock);
    let area = Arc::new(DataArea::create(area_bytes, policy).unwrap());
    let pool = Pool::slots(area.len(), SLOT_BYTES);
    let master = listener
        .accept(
            Config::originator(Mode::Tmm, SLOTS, area.clone()),
            pool.capacity(),
        )
        .unwrap()
        .into_master()
        .unwrap();
    TmmParent {
        child,
        area,
        pool,
        master,
    }
}

fn tmm_stream() {
    let TmmParent {
        child,
        area,
        mut pool,
        mut master,
    } = tmm_parent("tmm", "tmm-receiver", AREA_BYTES, PagePolicy::PreferHuge);
    let start = Instant::now();
    let mut seq = 0;
    let mut batch = Vec::with_capacity(32);
    while seq < STREAM {
        master.reclaim(&mut pool).unwrap();
        let want = 32.min((STREAM - seq) as usize);
        fill_buffers(&mut pool, &area, &mut seq, &mut batch, want);
        if batch.is_empty() {
            master.link().wait_incoming(WAIT).unwrap();
            continue;
        }
        send_all(&mut master, &mut pool, &batch);
    }
    while !master.lent().is_empty() {
        master.link().wait_incoming(WAIT).unwrap();
        master.reclaim(&mut pool).unwrap();
    }
    let (status, out) = finish(child);
    assert!(status.success(), "receiver failed: {out}");
    assert!(out.contains(&format!("verified {STREAM}")), "{out}");
    let acc = pool.audit(&[master.lent()]).unwrap();
    assert_eq!(acc.free, pool.capacity());
    let st = master.link().stats();
    println!(
        "  {STREAM} IOrecs TMM in {:.2?}, {} wake-ups sent, {} sleeps",
        start.elapsed(),
        st.wakeups_sent,
        st.sleeps
    );
}

fn rmm_stream() {
    let sock = sock_path("rmm");
    let listener = Listener::bind(&sock).unwrap();
    let child = spawn("rmm-originator", &sock);
    let mut master = listener
        .accept(
            Config::receiver(Mode::Rmm, SLOTS),
            AREA_BYTES / SLOT_BYTES as usize,
        )
        .unwrap()
        .into_master()
        .unwrap();
    let area = master.area().clone();
    assert!(!area.is_writable());
    let mut pool = Pool::slots(area.len(), SLOT_BYTES);
    let start = Instant::now();
    let mut next = 0u64;
    let mut recs = [IoRec::default(); 32];
    let mut posts = Vec::with_capacity(SLOTS);
    let mut buf = vec![0u8; 2048];
    while next < STREAM {
        // Keep the originator supplied with empty buffers.
        posts.clear();
        while posts.len() < 32 && master.lent().len() + posts.len() < SLOTS {
            let id = pool.alloc(SLOT_BYTES as usize).unwrap();
            posts.push(pool.iorec(id));
        }
        // The originator leaves as soon as it filled the last buffer; posting then finds
        // it gone, and what it published before leaving is still received below.
        let n = match master.send(&mut pool, &posts) {
            Ok(n) => n,
            Err(Error::PeerGone) => 0,
            Err(e) => panic!("{e}"),
        };
        for rec in &posts[n..] {
            pool.free(rec.tag() as u32);
        }
        let got = master.recv(&mut pool, &mut recs).unwrap();
        if got == 0 {
            master.link().wait_incoming(WAIT).unwrap();
            continue;
        }
        for rec in &recs[..got] {
            let len = area.gather(rec.extents(), &mut buf).unwrap();
            assert_eq!(verify(&buf[..len]).unwrap(), next);
            next += 1;
            pool.free(rec.tag() as u32);
        }
    }
    master.link().disconnect();
    let (status, out) = finish(child);
    assert!(status.success(), "originator failed: {out}");
    master.reclaim_all(&mut pool);
    assert_eq!(pool.audit(&[master.lent()]).unwrap().free, pool.capacity());
    println!("  {STREAM} IOrecs RMM in {:.2?}", start.elapsed());
}

fn multicast_with_a_stalled_receiver() {
    const N: u64 = 50_000;
    let sock = sock_path("mc");
    let listener = Listener::bind(&sock).unwrap();
    let area = Arc::new(DataArea::create(AREA_BYTES, PagePolicy::PreferHuge).unwrap());
    let mut pool = Pool::slots(area.len(), SLOT_BYTES);
    let mut mc = Multicast::new();
    let mut children = Vec::new();
    for role in ["mc-receiver", "mc-stalled", "mc-receiver"] {
        children.push(spawn(role, &sock));
        let m = listener
            .accept(
                Config::originator(Mode::Tmm, 64, area.clone()),
                pool.capacity(),
            )
            .unwrap()
            .into_master()
            .unwrap();
        mc.add(m, 64);
    }
    let mut seq = 0;
    let mut batch = Vec::new();
    let start = Instant::now();
    while seq < N {
        mc.reclaim(&mut pool).unwrap();
        // The test paces itself on the healthy receivers (0 and 2) so that they lose
        // nothing; it never waits for the stalled one (1).
        let want = 32.min((N - seq) as usize);
        for i in [0, 2] {
            assert!(
                mc.member(i).link().wait_space(want, WAIT).unwrap(),
                "receiver {i} stuck"
            );
            while mc.member(i).lent().len() + want > 64 {
                mc.member(i).link().wait_incoming(WAIT).unwrap();
                mc.reclaim(&mut pool).unwrap();
            }
        }
        fill_buffers(&mut pool, &area, &mut seq, &mut batch, want);
        assert_eq!(
            batch.len(),
            want,
            "pool ran dry: the stalled receiver held too much"
        );
        mc.send(&mut pool, &batch).unwrap();
    }
    let elapsed = start.elapsed();
    let (s0, s1, s2) = (mc.stats(0), mc.stats(1), mc.stats(2));
    assert_eq!((s0.delivered, s0.dropped), (N, 0));
    assert_eq!((s2.delivered, s2.dropped), (N, 0));
    assert_eq!(
        s1.delivered, 64,
        "the stalled receiver holds exactly its quota"
    );
    assert_eq!(s1.dropped, N - 64);
    // Healthy receivers finish (everything returned); the stalled one is killed and its
    // 64 buffers come back.
    for i in [0, 2] {
        while !mc.member(i).lent().is_empty() {
            mc.member(i).link().wait_incoming(WAIT).unwrap();
            mc.reclaim(&mut pool).unwrap();
        }
        mc.member(i).link().disconnect();
    }
    let mut stalled = children.remove(1);
    stalled.kill().unwrap();
    stalled.wait().unwrap();
    for c in children {
        let (status, out) = finish(c);
        assert!(
            status.success() && out.contains(&format!("verified {N}")),
            "{out}"
        );
    }
    let t = Instant::now();
    while mc.check_peers(&mut pool) > 0 {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(10));
    }
    mc.reclaim(&mut pool).unwrap();
    let acc = pool.audit(&mc.lend_sets()).unwrap();
    assert_eq!(acc.free, pool.capacity(), "{acc:?}");
    println!(
        "  {N} buffers to 2 healthy receivers in {elapsed:.2?}; stalled one dropped {}",
        s1.dropped
    );
}

fn sigkill_reclaims_everything() {
    let TmmParent {
        mut child,
        area,
        mut pool,
        mut master,
    } = tmm_parent("kill", "kill-victim", AREA_BYTES, PagePolicy::PreferHuge);
    let mut seq = 0;
    let mut batch = Vec::new();
    fill_buffers(&mut pool, &area, &mut seq, &mut batch, 200);
    send_all(&mut master, &mut pool, &batch);
    // Let the child take its 100, then kill it mid-stream.
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("holding"), "{line}");
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(matches!(
        master.link().wait_incoming(WAIT),
        Err(Error::PeerGone)
    ));
    assert_eq!(master.lent().len(), 200);
    assert_eq!(master.reclaim_all(&mut pool), 200);
    assert_eq!(pool.audit(&[master.lent()]).unwrap().free, pool.capacity());
    println!("  killed receiver held 200 buffers; all 200 reclaimed");
}

fn hostile_receiver_is_evicted() {
    let TmmParent {
        mut child,
        area,
        mut pool,
        mut master,
    } = tmm_parent("hostile-r", "hostile-receiver", 1 << 20, PagePolicy::Shmem);
    master.link().set_max_errors(50);
    let mut seq = 0;
    let mut batch = Vec::new();
    let mut recs = [IoRec::default(); 32];
    let err = loop {
        if master.lent().len() < 64 {
            fill_buffers(&mut pool, &area, &mut seq, &mut batch, 8);
            let n = match master.send(&mut pool, &batch) {
                Ok(n) => n,
                Err(e) => break e,
            };
            for rec in &batch[n..] {
                pool.free(rec.tag() as u32);
            }
        }
        match master.recv(&mut pool, &mut recs) {
            Ok(n) => recs[..n].iter().for_each(|r| pool.free(r.tag() as u32)),
            // Reported, counted, survived: keep going until the peer is evicted.
            Err(Error::BadCount { .. } | Error::BadStamp { .. } | Error::BadIoRec(_)) => {}
            Err(e) => break e,
        }
        match master.link().wait_incoming(Some(Duration::from_millis(50))) {
            Ok(_) | Err(Error::BadCount { .. } | Error::BadStamp { .. }) => {}
            Err(e) => break e,
        }
    };
    let st = master.link().stats();
    assert!(
        matches!(err, Error::PeerEvicted { errors: 51, .. }),
        "{err}"
    );
    assert_eq!(st.bad_iorecs, HOSTILE_IORECS, "{st:?}");
    assert_eq!(st.bad_counts, 51 - HOSTILE_IORECS, "{st:?}");
    // Every later call on the master reports the eviction, and the first one takes back
    // everything that was lent (the eviction may have been seen by a link-level wait,
    // which has no pool to give buffers back to).
    assert!(matches!(
        master.send(&mut pool, &[]),
        Err(Error::PeerEvicted { .. })
    ));
    assert_eq!(pool.audit(&[master.lent()]).unwrap().free, pool.capacity());
    child.kill().unwrap();
    child.wait().unwrap();
    println!(
        "  hostile receiver evicted after {} bad IOrecs and {} bad counts: {err}",
        st.bad_iorecs, st.bad_counts
    );
}

fn hostile_originator_is_evicted() {
    let sock = sock_path("hostile-o");
    let listener = Listener::bind(&sock).unwrap();
    let mut child = spawn("hostile-originator", &sock);
    let mut peer: Peer = listener
        .accept(Config::receiver(Mode::Tmm, SLOTS), 0)
        .unwrap()
        .into_peer()
        .unwrap();
    peer.link().set_max_errors(60);
    let mut recs = [IoRec::default(); 32];
    let mut good = 0u64;
    let err = loop {
        match peer.recv(&mut recs) {
            Ok(n) => {
                for rec in &recs[..n] {
                    // Whatever got through validation lies inside the area: read it.
                    let mut b = vec![0u8; rec.total_len() as usize];
                    peer.area().gather(rec.extents(), &mut b).unwrap();
                    good += 1;
                }
            }
            Err(Error::BadCount { .. } | Error::BadStamp { .. } | Error::BadIoRec(_)) => {}
            Err(e) => break e,
        }
        match peer.link().wait_incoming(Some(Duration::from_millis(20))) {
            Ok(_) | Err(Error::BadCount { .. } | Error::BadStamp { .. }) => {}
            Err(e) => break e,
        }
    };
    let st = peer.link().stats();
    assert!(
        matches!(err, Error::PeerEvicted { errors: 61, .. }),
        "{err}"
    );
    assert_eq!(st.bad_iorecs + st.bad_counts, 61);
    // Every junk IOrec of phase 1 was read and validated; phase 2's forged stamps may
    // have made the victim read more junk before a forged count evicted the hostile.
    assert!(
        st.bad_iorecs + good >= HOSTILE_IORECS,
        "{st:?}, {good} valid"
    );
    assert!(st.bad_counts >= 1, "{st:?}");
    child.kill().unwrap();
    child.wait().unwrap();
    println!(
        "  hostile originator evicted ({} bad IOrecs, {} bad counts, {good} valid read)",
        st.bad_iorecs, st.bad_counts
    );
}

fn readonly_view_is_enforced_by_the_kernel() {
    let TmmParent {
        child,
        area,
        master: _master,
        ..
    } = tmm_parent("ro", "readonly-writer", 1 << 20, PagePolicy::PreferHuge);
    area.write(0, b"original").unwrap();
    let (status, out) = finish(child);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(libc_sigsegv()),
        "child output:\n{out}"
    );
    assert!(out.contains("library refused"), "{out}");
    assert!(
        out.contains("kernel refused mapping via O_RDONLY: Permission denied"),
        "{out}"
    );
    assert!(
        out.contains("kernel refused mapping via O_RDWR: Operation not permitted"),
        "{out}"
    );
    assert!(
        out.contains("mprotect to writable: Err(Os { code: 13"),
        "{out}"
    );
    assert!(!out.contains("write went through"), "{out}");
    let mut b = [0u8; 8];
    area.read(0, &mut b).unwrap();
    assert_eq!(&b, b"original");
    println!("  receiver's writes refused: mmap EACCES/EPERM, mprotect EACCES, store SIGSEGV");
}

fn libc_sigsegv() -> i32 {
    rustix::process::Signal::SEGV.as_raw()
}

fn main() {
    if let (Ok(role), Some(sock)) = (std::env::var("RBUF_CHILD"), std::env::var_os("RBUF_SOCK")) {
        // Die with the parent, so a failed scenario never leaves children behind.
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
            .unwrap();
        child_main(&role, Path::new(&sock));
        return;
    }
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let scenarios: [(&str, fn()); 7] = [
        ("tmm_stream", tmm_stream),
        ("rmm_stream", rmm_stream),
        (
            "multicast_with_a_stalled_receiver",
            multicast_with_a_stalled_receiver,
        ),
        ("sigkill_reclaims_everything", sigkill_reclaims_everything),
        ("hostile_receiver_is_evicted", hostile_receiver_is_evicted),
        (
            "hostile_originator_is_evicted",
            hostile_originator_is_evicted,
        ),
        (
            "readonly_view_is_enforced_by_the_kernel",
            readonly_view_is_enforced_by_the_kernel,
        ),
    ];
    let mut ran = 0;
    for (name, f) in scenarios {
        if !filter.is_empty() && !filter.iter().any(|p| name.contains(p.as_str())) {
            continue;
        }
        println!("cross_process::{name} ...");
        let t = Instant::now();
        f();
        println!("cross_process::{name} ok ({:.2?})", t.elapsed());
        ran += 1;
    }
    let _ = std::fs::remove_dir_all(sock_path("x").parent().unwrap());
    println!("test result: ok. {ran} cross-process scenarios passed");
}
