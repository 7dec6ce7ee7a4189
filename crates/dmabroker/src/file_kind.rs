//! What kind of file is at a path, in words, for errors that refuse it
//! ("/run/x is a FIFO, not a socket").

/// The kind of file `t` is, as a phrase with its article.
pub fn describe(t: rustix::fs::FileType) -> &'static str {
    use rustix::fs::FileType;
    match t {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Fifo => "a FIFO",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Socket => "a socket",
        FileType::Symlink => "a symbolic link",
        _ => "a file of unknown type",
    }
}

/// [`describe`] for what `std::fs::symlink_metadata` (or `metadata`) found.
pub fn of_metadata(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::MetadataExt;
    describe(rustix::fs::FileType::from_raw_mode(meta.mode()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_lstat_finds() {
        let dir = std::fs::symlink_metadata("/").unwrap();
        assert_eq!(of_metadata(&dir), "a directory");
        let null = std::fs::symlink_metadata("/dev/null").unwrap();
        assert_eq!(of_metadata(&null), "a character device");
    }
}
