//! Deployment: systemd's readiness protocol, the unit file, the man page.

use std::os::unix::net::UnixDatagram;
use std::process::Command;

use crate::common::*;

/// The notifications a proxy sends, as systemd would receive them.
fn receive(sock: &UnixDatagram, n: usize) -> Vec<String> {
    sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    (0..n)
        .map(|_| {
            let mut buf = [0u8; 512];
            let len = sock.recv(&mut buf).expect("a notification");
            String::from_utf8_lossy(&buf[..len]).into_owned()
        })
        .collect()
}

#[test]
fn sd_notify_reports_ready_reloading_and_stopping() {
    let path = TempPath::new("notify.sock");
    let sock = UnixDatagram::bind(&path.0).unwrap();
    let mut proxy = Proxy::start_with_env(&[], &[("NOTIFY_SOCKET", path.arg())]);
    let ready = &receive(&sock, 1)[0];
    let pid = proxy.pid();
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    assert!(ready.contains(&format!("MAINPID={pid}")), "{ready}");
    assert!(
        ready.contains(&format!("STATUS=serving on {}", proxy.addr)),
        "{ready}"
    );
    proxy.signal(libc::SIGHUP);
    let reload = receive(&sock, 2);
    assert!(
        reload[0].starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reload:?}"
    );
    assert_eq!(reload[1], "READY=1");
    proxy.signal(libc::SIGTERM);
    assert_eq!(receive(&sock, 1)[0], "STOPPING=1");
    assert_eq!(proxy.wait_exit(IO_TIMEOUT), Some(0));
}

#[test]
fn the_man_page_comes_from_the_flags() {
    let bin = env!("CARGO_BIN_EXE_coresocks");
    let man = Command::new(bin).arg("man").output().unwrap();
    assert!(man.status.success());
    let page = String::from_utf8(man.stdout).unwrap();
    assert!(page.contains(".TH coresocks 1"), "{page}");
    let help = Command::new(bin).arg("--help").output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    // Every long flag of --help is in the page (roff escapes the dashes).
    let flags: Vec<&str> = help
        .split_whitespace()
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches(','))
        .collect();
    assert!(flags.len() > 40, "{flags:?}");
    for flag in flags {
        let escaped = flag.replace('-', "\\-");
        assert!(page.contains(&escaped), "{flag} is not in the man page");
    }
}

#[test]
fn the_systemd_unit_verifies_and_hardens() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/coresocks.service"
    ))
    .unwrap();
    for key in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=coresocks",
        "LimitNOFILE=",
        "LimitMEMLOCK=",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "RuntimeDirectory=coresocks",
    ] {
        assert!(unit.contains(key), "the unit lacks {key}");
    }
    // The example config it points at is valid.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/coresocks.toml");
    let bin = env!("CARGO_BIN_EXE_coresocks");
    let check = Command::new(bin)
        .args(["check-config", example])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let Ok(analyze) = Command::new("systemd-analyze").arg("--version").output() else {
        root::skip("no systemd-analyze here (Debian package systemd): the unit's keys were checked by name only");
        return;
    };
    assert!(analyze.status.success());
    // systemd-analyze checks the binary and the man page exist: point it
    // at this build and at the page it generates.
    let dir = std::env::temp_dir().join(format!("coresocks-unit-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("man/man1")).unwrap();
    let page = Command::new(bin).arg("man").output().unwrap().stdout;
    std::fs::write(dir.join("man/man1/coresocks.1"), page).unwrap();
    let local = dir.join("coresocks.service");
    std::fs::write(&local, unit.replace("/usr/local/bin/coresocks", bin)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&local)
        .env("MANPATH", dir.join("man"))
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let _ = std::fs::remove_dir_all(&dir);
    let about_us: Vec<&str> = said.lines().filter(|l| l.contains("coresocks")).collect();
    assert!(out.status.success() && about_us.is_empty(), "{said}");
}

#[test]
fn the_debian_package_holds_the_binary_unit_man_page_and_config() {
    let root = env!("CARGO_MANIFEST_DIR");
    let bin = env!("CARGO_BIN_EXE_coresocks");
    let out = std::env::temp_dir().join(format!("coresocks-deb-{}", std::process::id()));
    let built = Command::new(format!("{root}/packaging/build-deb.sh"))
        .args(["--binary", bin, "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let deb = String::from_utf8(built.stdout).unwrap().trim().to_owned();
    let info = Command::new("dpkg-deb")
        .args(["--info", &deb])
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout).into_owned();
    for want in [
        "Package: coresocks",
        &format!("Version: {}", env!("CARGO_PKG_VERSION")),
        "Depends: libc6, libgssapi-krb5-2",
        "postinst",
        "conffiles",
    ] {
        assert!(info.contains(want), "{want} not in:\n{info}");
    }
    let tree = out.join("tree");
    let x = Command::new("dpkg-deb")
        .args(["-x", &deb])
        .arg(&tree)
        .status()
        .unwrap();
    assert!(x.success());
    // The packaged binary runs, and its unit, page and config are in place.
    let version = Command::new(tree.join("usr/bin/coresocks"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("coresocks {}", env!("CARGO_PKG_VERSION"))
    );
    let unit = std::fs::read_to_string(tree.join("lib/systemd/system/coresocks.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/coresocks --config /etc/coresocks/coresocks.toml"));
    let page = Command::new("gzip")
        .arg("-dc")
        .arg(tree.join("usr/share/man/man1/coresocks.1.gz"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&page.stdout).contains(".TH coresocks 1"));
    let check = Command::new(bin)
        .arg("check-config")
        .arg(tree.join("etc/coresocks/coresocks.toml"))
        .status()
        .unwrap();
    assert!(check.success());
    let _ = std::fs::remove_dir_all(&out);
}

/// The container image definition (which this machine cannot build: no
/// container daemon, no registry for base images) checked as far as a
/// test can without one: its config passes check-config, and its runtime
/// stage installs the Debian package of every library the binary links
/// (by `ldd` and `dpkg -S`), besides those debian:bookworm-slim has.
#[test]
fn the_container_image_installs_what_the_binary_links_and_a_valid_config() {
    let root = env!("CARGO_MANIFEST_DIR");
    let containerfile = std::fs::read_to_string(format!("{root}/packaging/Containerfile")).unwrap();
    let runtime = containerfile
        .rsplit_once("\nFROM ")
        .map(|(_, stage)| stage)
        .expect("a runtime stage");
    assert!(runtime.starts_with("debian:bookworm-slim"), "{runtime}");
    let installed: Vec<&str> = runtime
        .split_whitespace()
        .skip_while(|w| *w != "--no-install-recommends")
        .skip(1)
        .take_while(|w| *w != "\\" && *w != "&&")
        .collect();
    assert!(!installed.is_empty(), "{runtime}");
    for needed in [
        "COPY packaging/container.toml /etc/coresocks/coresocks.toml",
        "USER coresocks",
    ] {
        assert!(runtime.contains(needed), "{needed}");
    }

    let bin = env!("CARGO_BIN_EXE_coresocks");
    let ldd = Command::new("ldd").arg(bin).output().expect("ldd runs");
    let in_slim = ["libc6", "libgcc-s1", "libstdc++6", "zlib1g"];
    let mut packages = Vec::new();
    for path in String::from_utf8_lossy(&ldd.stdout)
        .lines()
        .filter_map(|l| l.split("=> ").nth(1)?.split(' ').next())
    {
        // Merged /usr: dpkg knows a library by one of its two paths.
        let alt = path
            .strip_prefix("/usr")
            .map_or_else(|| format!("/usr{path}"), str::to_owned);
        let owner = [path, alt.as_str()].iter().find_map(|p| {
            let o = Command::new("dpkg").args(["-S", p]).output().ok()?;
            o.status.success().then(|| {
                String::from_utf8_lossy(&o.stdout)
                    .split(':')
                    .next()
                    .unwrap_or("")
                    .to_owned()
            })
        });
        let owner = owner.unwrap_or_else(|| panic!("no Debian package owns {path}"));
        packages.push(owner);
    }
    packages.sort();
    packages.dedup();
    // What the image's apt-get brings: the listed packages and what they
    // depend on (from dpkg's records of this machine, where they are
    // installed, since the binary runs here).
    let mut image: Vec<String> = installed.iter().map(|s| s.to_string()).collect();
    let mut next = 0;
    while next < image.len() {
        let o = Command::new("dpkg-query")
            .args(["-W", "-f", "${Depends}, ${Pre-Depends}", &image[next]])
            .output()
            .expect("dpkg-query runs");
        for dep in String::from_utf8_lossy(&o.stdout).split([',', '|']) {
            let name = dep.split_whitespace().next().unwrap_or("");
            let name = name.split(':').next().unwrap_or("");
            if !name.is_empty() && !image.iter().any(|i| i == name) {
                image.push(name.to_owned());
            }
        }
        next += 1;
    }
    for p in &packages {
        assert!(
            in_slim.contains(&p.as_str()) || image.contains(p),
            "the image lacks {p} (installs {image:?}; the binary links {packages:?})"
        );
    }

    let out = Command::new(bin)
        .args(["check-config", &format!("{root}/packaging/container.toml")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
