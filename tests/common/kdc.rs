//! A throw-away MIT Kerberos realm on loopback for the GSSAPI tests: one
//! KDC per test process, started on first use, killed when the process
//! ends (PR_SET_PDEATHSIG), its database, keytab and ticket caches in a
//! temporary directory.
//!
//! Principals: `rcmd/127.0.0.1` (the proxy, in the keytab), `stale/127.0.0.1`
//! (in the keytab with a key the KDC has since changed: its tickets are
//! wrong for the proxy), `alice` (the default ticket) and `brief` (tickets
//! that live four seconds). The realm allows one second of clock skew, so
//! an expired ticket is refused at once. Needs Debian's krb5-kdc,
//! krb5-admin-server and krb5-user (`scripts/test` installs them).

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const REALM: &str = "CORESOCKS.TEST";

pub struct Kdc {
    pub dir: PathBuf,
    /// Keys for `rcmd/127.0.0.1` and (an old one for) `stale/127.0.0.1`.
    pub keytab: PathBuf,
    pub port: u16,
}

impl Kdc {
    pub fn keytab_arg(&self) -> &str {
        self.keytab.to_str().unwrap()
    }

    /// Gets tickets for `principal` into the cache collection (the
    /// default cache stays alice's).
    pub fn kinit(&self, principal: &str, password: &str, lifetime: Option<&str>) {
        let mut cmd = Command::new("kinit");
        if let Some(l) = lifetime {
            cmd.args(["-l", l]);
        }
        run_with_input(cmd.arg(principal), password);
        run(Command::new("kswitch").args(["-p", "alice"]));
    }
}

/// The realm, made and started once per test process. Sets KRB5_CONFIG
/// and KRB5CCNAME for this process and the proxies it starts.
pub fn kdc() -> &'static Kdc {
    static KDC: OnceLock<Kdc> = OnceLock::new();
    KDC.get_or_init(start)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (install krb5-kdc krb5-admin-server krb5-user)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run_with_input(cmd: &mut Command, input: &str) {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (install krb5-user)"));
    writeln!(child.stdin.take().unwrap(), "{input}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn start() -> Kdc {
    let dir = std::env::temp_dir().join(format!("coresocks-kdc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("ccache")).unwrap();
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = dir.display();
    std::fs::write(
        dir.join("krb5.conf"),
        format!(
            "[libdefaults]\n  default_realm = {REALM}\n  dns_lookup_kdc = false\n  dns_lookup_realm = false\n  dns_canonicalize_hostname = false\n  rdns = false\n  udp_preference_limit = 1\n  clockskew = 1\n[realms]\n  {REALM} = {{\n    kdc = 127.0.0.1:{port}\n  }}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("kdc.conf"),
        format!(
            "[kdcdefaults]\n  kdc_listen = 127.0.0.1:{port}\n  kdc_tcp_listen = 127.0.0.1:{port}\n[realms]\n  {REALM} = {{\n    database_name = {d}/principal\n    key_stash_file = {d}/stash\n    acl_file = {d}/kadm5.acl\n  }}\n[logging]\n  kdc = FILE:{d}/kdc.log\n"
        ),
    )
    .unwrap();
    // Before any GSS-API call of this process, and inherited by proxies.
    std::env::set_var("KRB5_CONFIG", dir.join("krb5.conf"));
    std::env::set_var("KRB5_KDC_PROFILE", dir.join("kdc.conf"));
    std::env::set_var("KRB5CCNAME", format!("DIR:{d}/ccache"));
    std::env::set_var("KRB5RCACHEDIR", &dir);
    run(Command::new("kdb5_util").args(["create", "-s", "-r", REALM, "-P", "master-of-tests"]));
    let keytab = dir.join("proxy.keytab");
    let kt = keytab.to_str().unwrap();
    for q in [
        "addprinc -randkey rcmd/127.0.0.1".to_owned(),
        "addprinc -randkey stale/127.0.0.1".to_owned(),
        format!("ktadd -k {kt} rcmd/127.0.0.1 stale/127.0.0.1"),
        // The KDC moves on; the keytab keeps the old key.
        "cpw -randkey stale/127.0.0.1".to_owned(),
        "addprinc -pw alice-password alice".to_owned(),
        "addprinc -pw brief-password brief".to_owned(),
    ] {
        run(Command::new("kadmin.local").args(["-q", &q]));
    }
    // A thread that outlives every test holds the KDC, so the death
    // signal (sent when the spawning thread ends) comes with the process.
    let (tx, rx) = std::sync::mpsc::channel();
    let conf = dir.join("kdc.conf");
    std::thread::spawn(move || {
        let mut cmd = Command::new("krb5kdc");
        cmd.arg("-n")
            .env("KRB5_KDC_PROFILE", conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn();
        let _ = tx.send(child.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        loop {
            std::thread::park();
        }
    });
    rx.recv()
        .unwrap()
        .unwrap_or_else(|e| panic!("krb5kdc: {e} (install krb5-kdc)"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "krb5kdc did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let kdc = Kdc { dir, keytab, port };
    run_with_input(Command::new("kinit").arg("alice"), "alice-password");
    kdc
}
