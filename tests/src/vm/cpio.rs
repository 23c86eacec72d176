//! A writer for the `newc` cpio format, the one the Linux kernel unpacks as an initramfs.
//!
//! Written here rather than shelling out to `cpio` so the harness needs no staging directory: the
//! archive is assembled in memory from host files and generated text. The kernel accepts an
//! uncompressed archive, which boots faster under emulation than a gzip one.
//!
//! Format (per entry): the ASCII magic `070701`, thirteen 8-digit hex fields (inode, mode, uid, gid,
//! nlink, mtime, file size, dev major/minor, rdev major/minor, name size including its NUL, check),
//! the name and a NUL padded to a multiple of four bytes, then the data padded the same way. The
//! archive ends with an entry named `TRAILER!!!`. The kernel does not create missing parent
//! directories, so [`Archive`] adds an entry for every parent itself.

use std::collections::BTreeMap;

/// File type bits of `mode`.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir,
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
}

/// An initramfs being assembled: paths (absolute inside the guest) to directories, files and
/// symlinks. A later entry at the same path replaces an earlier one.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a directory (and its parents).
    pub fn dir(&mut self, path: &str) {
        let path = normalize(path);
        if path.is_empty() {
            return;
        }
        self.parents(&path);
        self.entries.entry(path).or_insert(Entry::Dir);
    }

    /// Adds a regular file with permission bits `mode` (e.g. `0o755`).
    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        let path = normalize(path);
        self.parents(&path);
        self.entries.insert(
            path,
            Entry::File {
                mode: mode & 0o7777,
                data,
            },
        );
    }

    /// Adds a symbolic link `path` -> `target`.
    pub fn symlink(&mut self, path: &str, target: &str) {
        let path = normalize(path);
        self.parents(&path);
        self.entries.insert(
            path,
            Entry::Symlink {
                target: target.to_owned(),
            },
        );
    }

    /// Whether something exists at `path`.
    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(&normalize(path))
    }

    fn parents(&mut self, path: &str) {
        let mut end = 0;
        while let Some(pos) = path[end..].find('/') {
            end += pos;
            self.entries.entry(path[..end].to_owned()).or_insert(Entry::Dir);
            end += 1;
        }
    }

    /// The archive in `newc` format. Parents come before their children (the map is sorted and a
    /// parent's path is a prefix of its children's).
    pub fn to_bytes(&self) -> Vec<u8> {
        let size: usize = self
            .entries
            .iter()
            .map(|(name, e)| {
                130 + name.len()
                    + match e {
                        Entry::File { data, .. } => data.len(),
                        Entry::Symlink { target } => target.len(),
                        Entry::Dir => 0,
                    }
            })
            .sum();
        let mut out = Vec::with_capacity(size + 256);
        for (ino, (name, entry)) in (1u32..).zip(&self.entries) {
            let (mode, nlink, data): (u32, u32, &[u8]) = match entry {
                Entry::Dir => (S_IFDIR | 0o755, 2, &[]),
                Entry::File { mode, data } => (S_IFREG | mode, 1, data),
                Entry::Symlink { target } => (S_IFLNK | 0o777, 1, target.as_bytes()),
            };
            write_entry(&mut out, ino, mode, nlink, name, data);
        }
        write_entry(&mut out, 0, 0, 1, "TRAILER!!!", &[]);
        out
    }
}

fn normalize(path: &str) -> String {
    path.trim_matches('/').to_owned()
}

fn write_entry(out: &mut Vec<u8>, ino: u32, mode: u32, nlink: u32, name: &str, data: &[u8]) {
    use std::io::Write as _;
    let name_size = name.len() + 1;
    // Fields: ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check.
    let header = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{name_size:08x}{:08x}",
        0,
        0,
        0,
        data.len(),
        0,
        0,
        0,
        0,
        0
    );
    out.extend_from_slice(header.as_bytes());
    let _ = write!(out, "{name}\0");
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(bytes: &[u8], at: usize, index: usize) -> u32 {
        let start = at + 6 + index * 8;
        let text = std::str::from_utf8(&bytes[start..start + 8]).unwrap_or("");
        u32::from_str_radix(text, 16).unwrap_or(u32::MAX)
    }

    #[test]
    fn parents_come_first_and_entries_are_aligned() {
        let mut archive = Archive::new();
        archive.file("/a/b/c.txt", 0o644, b"hello".to_vec());
        archive.symlink("/bin/sh", "busybox");
        let bytes = archive.to_bytes();
        // Walk the entries: a, a/b, a/b/c.txt, bin, bin/sh, TRAILER!!!
        let mut at = 0;
        let mut names = Vec::new();
        loop {
            assert_eq!(&bytes[at..at + 6], b"070701", "magic at {at}");
            assert_eq!(at % 4, 0);
            let name_size = field(&bytes, at, 11) as usize;
            let file_size = field(&bytes, at, 6) as usize;
            let name_start = at + 110;
            let name = std::str::from_utf8(&bytes[name_start..name_start + name_size - 1])
                .unwrap_or("?")
                .to_owned();
            let mut data_start = name_start + name_size;
            data_start += (4 - data_start % 4) % 4;
            if name == "a/b/c.txt" {
                assert_eq!(&bytes[data_start..data_start + file_size], b"hello");
                assert_eq!(field(&bytes, at, 1), 0o100644);
            }
            if name == "bin/sh" {
                assert_eq!(&bytes[data_start..data_start + file_size], b"busybox");
                assert_eq!(field(&bytes, at, 1), 0o120777);
            }
            let mut next = data_start + file_size;
            next += (4 - next % 4) % 4;
            names.push(name.clone());
            if name == "TRAILER!!!" {
                assert_eq!(next, bytes.len());
                break;
            }
            at = next;
        }
        assert_eq!(names, ["a", "a/b", "a/b/c.txt", "bin", "bin/sh", "TRAILER!!!"]);
    }

    #[test]
    fn a_later_file_replaces_an_earlier_one() {
        let mut archive = Archive::new();
        archive.file("/init", 0o755, b"one".to_vec());
        archive.file("init", 0o755, b"two".to_vec());
        assert!(archive.contains("/init"));
        let bytes = archive.to_bytes();
        assert!(bytes.windows(3).any(|w| w == b"two"));
        assert!(!bytes.windows(3).any(|w| w == b"one"));
    }
}
