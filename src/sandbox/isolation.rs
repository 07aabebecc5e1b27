//! The kernel-level cage around a worker: user + network + mount namespaces (no network at
//! all, a private size-capped tmpfs as the only writable place), a landlock ruleset (system
//! read-only, read-write only in the worker's scratch folder, no TCP, no signals out of the
//! domain) and a seccomp filter (no new processes, no ptrace, no mounts, no sockets but
//! AF_UNIX, ...). rlimits, the process group and the cleared environment are set by
//! `worker.rs` for every worker whatever the layers.
//!
//! Why three layers and not one: each covers what another misses on some kernel. Namespaces
//! cut the network even for code that reaches raw syscalls; landlock holds the filesystem
//! even where namespaces are disabled; seccomp stops process creation, which neither does.
//!
//! Everything that allocates or opens files is done in the parent ([`ChildSetup::prepare`]);
//! between fork and exec ([`ChildSetup::apply`]) only raw syscalls run, because the parent is
//! multi-threaded and an allocation there could deadlock on a lock held by another thread.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Once, OnceLock};

use crate::types::IsolationMode;
use anyhow::{bail, Context, Result};
use landlock::{path_beneath_rules, Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetCreatedAttr, Scope, ABI};
use nix::libc;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};

/// The layers a worker is started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Isolation {
    /// New user, network and mount namespaces; a tmpfs scratch folder.
    pub namespaces: bool,
    pub landlock: bool,
    pub seccomp: bool,
}

impl Isolation {
    pub const NONE: Isolation = Isolation {
        namespaces: false,
        landlock: false,
        seccomp: false,
    };

    /// Every layer this kernel supports, without a warning (tests, benchmarks).
    pub fn available() -> Isolation {
        let s = support();
        Isolation {
            namespaces: s.namespaces.is_ok(),
            landlock: s.landlock.is_ok(),
            seccomp: s.seccomp.is_ok(),
        }
    }

    /// The layers for `mode`; `Strict` fails naming each missing layer, `BestEffort` warns
    /// once per process.
    pub fn for_mode(mode: IsolationMode) -> Result<Isolation> {
        if mode == IsolationMode::Off {
            return Ok(Isolation::NONE);
        }
        let missing = support().missing();
        if !missing.is_empty() {
            if mode == IsolationMode::Strict {
                bail!(
                    "sandbox layers unavailable on this kernel: {}\nfix: run `metaforge doctor` for details, or set evaluation.isolation = \"best-effort\" to run without them",
                    missing.join("; ")
                );
            }
            static WARNED: Once = Once::new();
            WARNED.call_once(|| {
                eprintln!(
                    "metaforge: warning: sandbox running WITHOUT {} (set evaluation.isolation = \"strict\" to refuse instead; `metaforge doctor` explains)",
                    missing.join("; ")
                )
            });
        }
        Ok(Isolation::available())
    }
}

/// What this kernel allows, probed once per process by starting `/bin/true` under each layer.
#[derive(Debug)]
pub struct Support {
    pub namespaces: Result<(), String>,
    /// The landlock ABI version.
    pub landlock: Result<i32, String>,
    pub seccomp: Result<(), String>,
}

impl Support {
    /// One line per missing layer, naming why.
    pub fn missing(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Err(e) = &self.namespaces {
            out.push(format!("network/user/mount namespaces ({e})"));
        }
        if let Err(e) = &self.landlock {
            out.push(format!("landlock ({e})"));
        }
        if let Err(e) = &self.seccomp {
            out.push(format!("seccomp ({e})"));
        }
        out
    }
}

pub fn support() -> &'static Support {
    static SUPPORT: OnceLock<Support> = OnceLock::new();
    SUPPORT.get_or_init(probe)
}

fn probe() -> Support {
    let scratch = tempfile::Builder::new().prefix("metaforge-probe-").tempdir();
    let try_layers = |iso: Isolation| -> Result<(), String> {
        let dir = scratch.as_ref().map_err(|e| e.to_string())?;
        let roots = read_roots(&[], dir.path());
        let setup = ChildSetup::prepare(&iso, dir.path(), dir.path(), &roots, 1).map_err(|e| format!("{e:#}"))?;
        let mut cmd = std::process::Command::new("/bin/true");
        cmd.stdin(std::process::Stdio::null());
        // SAFETY: `apply` only makes raw syscalls on data prepared before the fork.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || setup.apply());
        }
        match cmd.status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("test process exited with {s}")),
            Err(e) => Err(e.to_string()),
        }
    };
    let abi = landlock_abi();
    Support {
        namespaces: try_layers(Isolation {
            namespaces: true,
            ..Isolation::NONE
        }),
        landlock: match abi {
            Err(e) => Err(e),
            Ok(v) => try_layers(Isolation {
                landlock: true,
                ..Isolation::NONE
            })
            .map(|_| v),
        },
        seccomp: try_layers(Isolation {
            seccomp: true,
            ..Isolation::NONE
        }),
    }
}

fn landlock_abi() -> Result<i32, String> {
    // SAFETY: the documented way to ask for the ABI version: null attr, size 0, VERSION flag.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    };
    if v < 1 {
        return Err(format!(
            "not enabled in this kernel ({}); add landlock to the lsm= boot parameter",
            std::io::Error::last_os_error()
        ));
    }
    Ok(v as i32)
}

/// Read-only roots every worker needs: the system, the Python installation, the runtime.
pub fn read_roots(python_prefixes: &[PathBuf], runtime: &Path) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = [
        "/usr",
        "/lib",
        "/lib64",
        "/bin",
        "/etc/ld.so.cache",
        "/dev/null",
        "/dev/urandom",
    ]
    .iter()
    .map(PathBuf::from)
    .filter(|p| p.exists())
    .collect();
    roots.extend(python_prefixes.iter().cloned());
    roots.push(runtime.to_path_buf());
    roots
}

/// Data for the child side, prepared in the parent.
pub struct ChildSetup {
    namespaces: Option<NamespaceSetup>,
    landlock: Option<LandlockSetup>,
    seccomp: Option<&'static [BpfProgram]>,
}

struct LandlockSetup {
    ruleset: OwnedFd,
    /// With a tmpfs scratch, the read-write rule must name the tmpfs root, which exists only
    /// after the mount in the child: the child adds it (these access bits) itself.
    scratch_access_in_child: Option<u64>,
}

/// `struct landlock_path_beneath_attr` (packed in the kernel's uapi).
#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

struct NamespaceSetup {
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
    scratch: CString,
    tmpfs_options: CString,
}

impl ChildSetup {
    /// `workdir` is readable (the candidate file lives there); `scratch` is the only writable
    /// folder and becomes a tmpfs of `disk_mb` MiB when namespaces are on.
    pub fn prepare(
        iso: &Isolation,
        workdir: &Path,
        scratch: &Path,
        read_roots: &[PathBuf],
        disk_mb: u64,
    ) -> Result<ChildSetup> {
        let namespaces = if iso.namespaces {
            let uid = unsafe { libc::geteuid() };
            let gid = unsafe { libc::getegid() };
            Some(NamespaceSetup {
                uid_map: format!("{uid} {uid} 1").into_bytes(),
                gid_map: format!("{gid} {gid} 1").into_bytes(),
                scratch: CString::new(scratch.as_os_str().as_bytes())?,
                tmpfs_options: CString::new(format!("size={}m,mode=0700", disk_mb.max(1)))?,
            })
        } else {
            None
        };
        let landlock = if iso.landlock {
            let abi = ABI::from(landlock_abi().unwrap_or(0)).min(ABI::V6);
            let in_child = iso.namespaces;
            let scratch_rule = if in_child { None } else { Some(scratch) };
            Some(LandlockSetup {
                ruleset: landlock_ruleset(abi, workdir, scratch_rule, read_roots)?,
                scratch_access_in_child: in_child.then(|| AccessFs::from_all(abi).bits()),
            })
        } else {
            None
        };
        let seccomp = if iso.seccomp { Some(seccomp_programs()?) } else { None };
        Ok(ChildSetup {
            namespaces,
            landlock,
            seccomp,
        })
    }

    /// The same layers as data for a fork server child (`runtime/zygote.py` applies them
    /// in this order, as `apply` does), and the landlock ruleset it must be sent.
    pub fn fork_layers(&self) -> Result<(serde_json::Map<String, serde_json::Value>, Option<std::os::fd::RawFd>)> {
        use serde_json::{json, Value};
        let text = |b: &[u8]| -> Result<String> { Ok(std::str::from_utf8(b).context("not UTF-8")?.to_string()) };
        let namespaces = match &self.namespaces {
            Some(ns) => json!({
                "uid_map": text(&ns.uid_map)?,
                "gid_map": text(&ns.gid_map)?,
                "scratch": text(ns.scratch.as_bytes())?,
                "tmpfs_options": text(ns.tmpfs_options.as_bytes())?,
            }),
            None => Value::Null,
        };
        let landlock = match &self.landlock {
            Some(ll) => json!({"scratch_access": ll.scratch_access_in_child}),
            None => Value::Null,
        };
        let mut layers = serde_json::Map::new();
        layers.insert("namespaces".into(), namespaces);
        layers.insert("landlock".into(), landlock);
        layers.insert("seccomp".into(), json!(self.seccomp.is_some()));
        Ok((layers, self.landlock.as_ref().map(|ll| ll.ruleset.as_raw_fd())))
    }

    /// Runs between fork and exec. Only raw syscalls on prepared data: no allocation.
    pub fn apply(&self) -> std::io::Result<()> {
        use std::io::Error;
        // SAFETY: raw syscalls with pointers into data owned by `self`, alive until exec.
        unsafe {
            if let Some(ns) = &self.namespaces {
                if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET | libc::CLONE_NEWNS) != 0 {
                    return Err(Error::last_os_error());
                }
                write_proc(c"/proc/self/setgroups", b"deny")?;
                write_proc(c"/proc/self/uid_map", &ns.uid_map)?;
                write_proc(c"/proc/self/gid_map", &ns.gid_map)?;
                // Nothing mounted here may propagate back to the host.
                if libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(Error::last_os_error());
                }
                if libc::mount(
                    c"tmpfs".as_ptr(),
                    ns.scratch.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    ns.tmpfs_options.as_ptr().cast(),
                ) != 0
                {
                    return Err(Error::last_os_error());
                }
                if libc::chdir(ns.scratch.as_ptr()) != 0 {
                    return Err(Error::last_os_error());
                }
            }
            if let Some(ll) = &self.landlock {
                let ruleset = ll.ruleset.as_raw_fd();
                if let (Some(access), Some(ns)) = (ll.scratch_access_in_child, &self.namespaces) {
                    let dir = libc::open(ns.scratch.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC);
                    if dir < 0 {
                        return Err(Error::last_os_error());
                    }
                    let rule = PathBeneathAttr {
                        allowed_access: access,
                        parent_fd: dir,
                    };
                    let rc = libc::syscall(
                        libc::SYS_landlock_add_rule,
                        ruleset,
                        1u32, // LANDLOCK_RULE_PATH_BENEATH
                        &rule as *const PathBeneathAttr,
                        0u32,
                    );
                    libc::close(dir);
                    if rc != 0 {
                        return Err(Error::last_os_error());
                    }
                }
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(Error::last_os_error());
                }
                if libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) != 0 {
                    return Err(Error::last_os_error());
                }
            }
            if let Some(programs) = self.seccomp {
                for p in programs {
                    seccompiler::apply_filter(p).map_err(|_| Error::last_os_error())?;
                }
            }
        }
        Ok(())
    }
}

unsafe fn write_proc(path: &std::ffi::CStr, data: &[u8]) -> std::io::Result<()> {
    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let n = libc::write(fd, data.as_ptr().cast(), data.len());
    libc::close(fd);
    if n != data.len() as isize {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Landlock: read (and execute) under the read roots and the worker folder, everything in
/// the scratch folder, no TCP bind/connect, no signals or abstract sockets outside.
fn landlock_ruleset(abi: ABI, workdir: &Path, scratch: Option<&Path>, read_roots: &[PathBuf]) -> Result<OwnedFd> {
    let mut readable: Vec<&Path> = read_roots.iter().map(PathBuf::as_path).collect();
    readable.push(workdir);
    let created = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .handle_access(AccessNet::from_all(abi))?
        .scope(Scope::from_all(abi))?
        .create()?
        .add_rules(path_beneath_rules(readable, AccessFs::from_read(abi)))?
        .add_rules(path_beneath_rules(scratch, AccessFs::from_all(abi)))?;
    let fd: Option<OwnedFd> = created.into();
    let fd = fd.context("landlock is not supported by this kernel")?;
    // Out of the way of fds 3 and 4, which the worker's pipes are dup2'ed onto after fork.
    let high = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(100))?;
    // SAFETY: `high` is a fresh descriptor that nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(high) })
}

/// The seccomp programs, built once. Denied calls fail with EPERM (Python raises
/// PermissionError, which the worker reports as a policy denial); `clone3` fails with ENOSYS
/// so the C library falls back to `clone`, whose flags the filter can inspect.
fn seccomp_programs() -> Result<&'static [BpfProgram]> {
    static PROGRAMS: OnceLock<Result<Vec<BpfProgram>, String>> = OnceLock::new();
    PROGRAMS
        .get_or_init(|| build_seccomp().map_err(|e| format!("{e:#}")))
        .as_deref()
        .map_err(|e| anyhow::anyhow!("cannot build the seccomp filter: {e}"))
}

/// The seccomp programs as hex of their `sock_filter` instructions (native byte order), for
/// the fork server, which installs them in each child.
pub fn seccomp_hex() -> Result<Vec<String>> {
    Ok(seccomp_programs()?
        .iter()
        .map(|program| {
            let mut bytes = Vec::with_capacity(program.len() * 8);
            for insn in program {
                bytes.extend_from_slice(&insn.code.to_ne_bytes());
                bytes.push(insn.jt);
                bytes.push(insn.jf);
                bytes.extend_from_slice(&insn.k.to_ne_bytes());
            }
            hex::encode(bytes)
        })
        .collect())
}

/// Calls a candidate never needs; each one is an escape or an attack on the host.
const DENIED_SYSCALLS: &[(&str, i64)] = &[
    ("fork", libc::SYS_fork),
    ("vfork", libc::SYS_vfork),
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    ("kcmp", libc::SYS_kcmp),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("kexec_load", libc::SYS_kexec_load),
    ("reboot", libc::SYS_reboot),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("acct", libc::SYS_acct),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("syslog", libc::SYS_syslog),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("sethostname", libc::SYS_sethostname),
    ("setdomainname", libc::SYS_setdomainname),
    ("fanotify_init", libc::SYS_fanotify_init),
    ("move_pages", libc::SYS_move_pages),
    ("migrate_pages", libc::SYS_migrate_pages),
];

fn build_seccomp() -> Result<Vec<BpfProgram>> {
    let arch = seccompiler::TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| anyhow::anyhow!("seccomp: unsupported architecture: {e}"))?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED_SYSCALLS.iter().map(|(_, nr)| (*nr, Vec::new())).collect();
    // clone without CLONE_THREAD creates a process: deny; threads stay allowed.
    rules.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
            0,
        )?])?],
    );
    // Only AF_UNIX sockets (asyncio's self-pipe); the network namespace has no interface
    // anyway, this also closes netlink and packet sockets.
    rules.insert(
        libc::SYS_socket,
        vec![SeccompRule::new(vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Ne,
            libc::AF_UNIX as u64,
        )?])?],
    );
    let deny: BpfProgram = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )?
    .try_into()?;
    let clone3: BpfProgram = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )?
    .try_into()?;
    Ok(vec![deny, clone3])
}

/// A report of the layers for `metaforge doctor`.
pub fn doctor_lines() -> Vec<(String, Result<String, String>)> {
    let s = support();
    vec![
        (
            "network namespace (no network), user + mount namespaces, tmpfs scratch".into(),
            s.namespaces.clone().map(|_| "active".into()),
        ),
        (
            "landlock (filesystem read-only outside scratch, no TCP, no signals out)".into(),
            s.landlock.clone().map(|abi| format!("active (ABI v{abi})")),
        ),
        (
            format!(
                "seccomp (no new processes, no ptrace/mount/bpf/…, only AF_UNIX sockets; {} calls denied)",
                DENIED_SYSCALLS.len() + 3
            ),
            s.seccomp.clone().map(|_| "active".into()),
        ),
    ]
}
