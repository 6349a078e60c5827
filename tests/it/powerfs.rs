//! A filesystem that loses what was not made durable: the power cut of
//! `powerloss.rs`, as SQLite's crash-test VFS and LazyFS simulate it.
//!
//! Mounted with FUSE inside the test process (root and `/dev/fuse` needed; the mount is
//! the kernel's, so the weir under test uses it through ordinary syscalls). It promises
//! exactly what POSIX does and nothing more:
//!
//! - a file's bytes are durable once `fsync` or `fdatasync` of that file returned;
//! - a name (create, rename, unlink, mkdir) is durable once `fsync` of its directory
//!   returned.
//!
//! Every file keeps what was written and what its last fsync made durable; every
//! directory keeps its entries and those its last fsync made durable. [`PowerFs::cut`]
//! puts everything back to its durable state, as a power loss would on a disk that
//! honours flushes. Real filesystems often keep more (ext4 commits a new file's name with
//! its first fsync), so this is the strict end: software that survives it survives them.
//!
//! The kernel caches nothing: attributes and names have a zero TTL and files are opened
//! with direct IO, so after a cut every read sees the durable state. Everything lives in
//! memory; the tests that mount it write a few MiB.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    WriteFlags,
};
use parking_lot::Mutex;

/// Attributes and names are never cached by the kernel.
const TTL: Duration = Duration::ZERO;
/// What `statfs` reports: plenty, so weir's free-space reserve never refuses.
const BLOCKS: u64 = 1 << 24;
const BLOCK: u32 = 4096;

enum Kind {
    File {
        data: Vec<u8>,
        durable: Vec<u8>,
    },
    Dir {
        entries: BTreeMap<OsString, u64>,
        durable: BTreeMap<OsString, u64>,
    },
}

impl Kind {
    fn empty_file() -> Kind {
        Kind::File {
            data: Vec::new(),
            durable: Vec::new(),
        }
    }

    fn empty_dir() -> Kind {
        Kind::Dir {
            entries: BTreeMap::new(),
            durable: BTreeMap::new(),
        }
    }
}

struct Node {
    kind: Kind,
    perm: u16,
}

#[derive(Default)]
struct State {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    /// fsyncs of files and directories, for the test to see it exercised something.
    fsyncs: u64,
}

impl State {
    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let node = self.nodes.get(&ino)?;
        let (kind, size, nlink) = match &node.kind {
            Kind::File { data, .. } => (FileType::RegularFile, data.len() as u64, 1),
            Kind::Dir { .. } => (FileType::Directory, 0, 2),
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm: node.perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: BLOCK,
            flags: 0,
        })
    }

    fn entries(&self, dir: u64) -> Result<&BTreeMap<OsString, u64>, Errno> {
        match self.nodes.get(&dir).map(|n| &n.kind) {
            Some(Kind::Dir { entries, .. }) => Ok(entries),
            Some(Kind::File { .. }) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn entries_mut(&mut self, dir: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match self.nodes.get_mut(&dir).map(|n| &mut n.kind) {
            Some(Kind::Dir { entries, .. }) => Ok(entries),
            Some(Kind::File { .. }) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn file_mut(&mut self, ino: u64) -> Result<(&mut Vec<u8>, &mut Vec<u8>), Errno> {
        match self.nodes.get_mut(&ino).map(|n| &mut n.kind) {
            Some(Kind::File { data, durable }) => Ok((data, durable)),
            Some(Kind::Dir { .. }) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        }
    }

    /// A new node named `name` in `parent`; `EEXIST` if the name is taken.
    fn add(&mut self, parent: u64, name: &OsStr, kind: Kind, perm: u16) -> Result<u64, Errno> {
        if self.entries(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        self.next_ino += 1;
        let ino = self.next_ino;
        self.nodes.insert(ino, Node { kind, perm });
        self.entries_mut(parent)?.insert(name.to_os_string(), ino);
        Ok(ino)
    }

    fn is_file(&self, ino: u64) -> bool {
        matches!(
            self.nodes.get(&ino).map(|n| &n.kind),
            Some(Kind::File { .. })
        )
    }

    fn is_empty_dir(&self, ino: u64) -> bool {
        matches!(self.entries(ino), Ok(e) if e.is_empty())
    }
}

/// The filesystem; clones share it (one is mounted, the test keeps one to cut).
#[derive(Clone)]
pub struct PowerFs {
    state: Arc<Mutex<State>>,
}

/// A mounted [`PowerFs`]; unmounted when dropped.
pub struct Mounted {
    pub fs: PowerFs,
    session: Option<fuser::BackgroundSession>,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = s.umount_and_join();
        }
    }
}

impl PowerFs {
    /// Mounts an empty filesystem at `at` (an existing empty directory). `Err` says why
    /// it cannot be mounted here (not root, no `/dev/fuse`).
    pub fn mount(at: &Path) -> Result<Mounted, String> {
        if !Path::new("/dev/fuse").exists() {
            return Err("/dev/fuse is missing".into());
        }
        let mut state = State {
            next_ino: 1,
            ..State::default()
        };
        state.nodes.insert(
            1,
            Node {
                kind: Kind::empty_dir(),
                perm: 0o755,
            },
        );
        let fs = PowerFs {
            state: Arc::new(Mutex::new(state)),
        };
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName("weir-powerfs".into())];
        let session = fuser::spawn_mount(fs.clone(), at, &config)
            .map_err(|e| format!("mounting a FUSE filesystem at {}: {e}", at.display()))?;
        Ok(Mounted {
            fs,
            session: Some(session),
        })
    }

    /// The power cut: every file and directory back to what its last fsync made
    /// durable. Nodes no durable name reaches stay in memory, unreachable.
    pub fn cut(&self) {
        let mut s = self.state.lock();
        for node in s.nodes.values_mut() {
            match &mut node.kind {
                Kind::File { data, durable } => data.clone_from(durable),
                Kind::Dir { entries, durable } => entries.clone_from(durable),
            }
        }
    }

    /// How many fsyncs (files and directories) it has served.
    pub fn fsyncs(&self) -> u64 {
        self.state.lock().fsyncs
    }

    fn reply_entry(&self, r: Result<u64, Errno>, reply: ReplyEntry) {
        let s = self.state.lock();
        match r.and_then(|ino| s.attr(ino).ok_or(Errno::ENOENT)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }
}

fn perm(mode: u32, umask: u32) -> u16 {
    ((mode & !umask) & 0o7777) as u16
}

impl Filesystem for PowerFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = {
            let s = self.state.lock();
            s.entries(parent.0)
                .and_then(|e| e.get(name).copied().ok_or(Errno::ENOENT))
        };
        self.reply_entry(r, reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.state.lock().attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut s = self.state.lock();
        if let Some(size) = size {
            match s.file_mut(ino.0) {
                Ok((data, _)) => data.resize(usize::try_from(size).unwrap(), 0),
                Err(e) => return reply.error(e),
            }
        }
        if let (Some(mode), Some(node)) = (mode, s.nodes.get_mut(&ino.0)) {
            node.perm = perm(mode, 0);
        }
        match s.attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let file = Kind::empty_file();
        let r = self
            .state
            .lock()
            .add(parent.0, name, file, perm(mode, umask));
        self.reply_entry(r, reply);
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let dir = Kind::empty_dir();
        let r = self
            .state
            .lock()
            .add(parent.0, name, dir, perm(mode, umask));
        self.reply_entry(r, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.state.lock();
        let r = s.entries(parent.0).and_then(|e| match e.get(name) {
            Some(&ino) if s.is_file(ino) => Ok(()),
            Some(_) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        });
        match r.and_then(|()| s.entries_mut(parent.0)) {
            Ok(entries) => {
                entries.remove(name);
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.state.lock();
        let r = s.entries(parent.0).and_then(|e| match e.get(name) {
            Some(&ino) if s.is_empty_dir(ino) => Ok(()),
            Some(&ino) if s.entries(ino).is_ok() => Err(Errno::ENOTEMPTY),
            Some(_) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        });
        match r.and_then(|()| s.entries_mut(parent.0)) {
            Ok(entries) => {
                entries.remove(name);
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut s = self.state.lock();
        let moved = match s.entries(parent.0).map(|e| e.get(name).copied()) {
            Ok(Some(ino)) => ino,
            Ok(None) => return reply.error(Errno::ENOENT),
            Err(e) => return reply.error(e),
        };
        let replaced = match s.entries(newparent.0).map(|e| e.get(newname).copied()) {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        if let Some(old) = replaced {
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return reply.error(Errno::EEXIST);
            }
            if s.entries(old).is_ok() && !s.is_empty_dir(old) {
                return reply.error(Errno::ENOTEMPTY);
            }
        }
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            return reply.error(Errno::EINVAL);
        }
        s.entries_mut(parent.0).unwrap().remove(name);
        s.entries_mut(newparent.0)
            .unwrap()
            .insert(newname.to_os_string(), moved);
        reply.ok();
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.state.lock().nodes.contains_key(&ino.0) {
            reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut s = self.state.lock();
        let file = Kind::empty_file();
        match s
            .add(parent.0, name, file, perm(mode, umask))
            .and_then(|ino| s.attr(ino).ok_or(Errno::ENOENT))
        {
            Ok(attr) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(0),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut s = self.state.lock();
        match s.file_mut(ino.0) {
            Ok((data, _)) => {
                let from = usize::try_from(offset).unwrap().min(data.len());
                let to = (from + size as usize).min(data.len());
                reply.data(&data[from..to]);
            }
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        bytes: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut s = self.state.lock();
        match s.file_mut(ino.0) {
            Ok((data, _)) => {
                let at = usize::try_from(offset).unwrap();
                if data.len() < at + bytes.len() {
                    data.resize(at + bytes.len(), 0);
                }
                data[at..at + bytes.len()].copy_from_slice(bytes);
                reply.written(u32::try_from(bytes.len()).unwrap());
            }
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut s = self.state.lock();
        s.fsyncs += 1;
        match s.file_mut(ino.0) {
            Ok((data, durable)) => {
                durable.clone_from(data);
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let mut s = self.state.lock();
        match s.file_mut(ino.0) {
            Ok((data, _)) => {
                let end = usize::try_from(offset + length).unwrap();
                if data.len() < end {
                    data.resize(end, 0);
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.state.lock().entries(ino.0) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let s = self.state.lock();
        let entries = match s.entries(ino.0) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        let dots = [(".".into(), ino.0), ("..".into(), ino.0)];
        let all = dots
            .iter()
            .map(|(n, i): &(OsString, u64)| (n.clone(), *i))
            .chain(entries.iter().map(|(n, i)| (n.clone(), *i)));
        for (i, (name, child)) in all.enumerate().skip(usize::try_from(offset).unwrap()) {
            let kind = match s.nodes.get(&child).map(|n| &n.kind) {
                Some(Kind::Dir { .. }) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            if reply.add(INodeNo(child), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut s = self.state.lock();
        s.fsyncs += 1;
        match s.nodes.get_mut(&ino.0).map(|n| &mut n.kind) {
            Some(Kind::Dir { entries, durable }) => {
                durable.clone_from(entries);
                reply.ok();
            }
            Some(Kind::File { .. }) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(
            BLOCKS,
            BLOCKS / 2,
            BLOCKS / 2,
            1 << 20,
            1 << 19,
            BLOCK,
            255,
            BLOCK,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }
}
