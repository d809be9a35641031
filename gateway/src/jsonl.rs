//! Appends records to a JSON-lines file from a thread of its own, so the
//! request path never waits on the disk (the usage log, the decision log).
//! A file moved away or deleted (by logrotate, say) is followed by a new one
//! at the same path, so rotation needs no signal and no `copytruncate`.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use serde::Serialize;

pub struct Appender<T> {
    tx: mpsc::Sender<T>,
}

impl<T: Serialize + Send + 'static> Appender<T> {
    /// Opens `path` for appending (created if missing); its thread lives
    /// as long as the appender.
    pub fn open(path: &Path) -> std::io::Result<Appender<T>> {
        let mut log = Log::open(path)?;
        let (tx, rx) = mpsc::channel::<T>();
        let name = path.display().to_string();
        std::thread::Builder::new()
            .name("jsonl-append".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    // Each batch ends flushed: nothing is left for the old file.
                    log.follow();
                    // Whatever queued meanwhile goes in the same write.
                    for record in std::iter::once(first).chain(rx.try_iter()) {
                        let mut line = serde_json::to_vec(&record).expect("a record serializes");
                        line.push(b'\n');
                        if let Err(e) = log.out.write_all(&line) {
                            tracing::error!(path = name, error = %e, "cannot append to the log");
                        }
                    }
                    if let Err(e) = log.out.flush() {
                        tracing::error!(path = name, error = %e, "cannot append to the log");
                    }
                }
            })?;
        Ok(Appender { tx })
    }

    pub fn append(&self, record: T) {
        let _ = self.tx.send(record);
    }
}

/// The file open at a path, and which file it is.
struct Log {
    path: PathBuf,
    out: BufWriter<File>,
    /// Device and inode of the open file.
    id: (u64, u64),
    /// A new file could not be opened (said once, until one opens).
    stuck: bool,
}

impl Log {
    fn open(path: &Path) -> std::io::Result<Log> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let meta = file.metadata()?;
        Ok(Log {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
            id: (meta.dev(), meta.ino()),
            stuck: false,
        })
    }

    /// Opens the file now at the path when the open one is no longer there
    /// (a `stat` per batch of records). Until a new one opens, records go on
    /// to the old file.
    fn follow(&mut self) {
        let here = std::fs::metadata(&self.path).ok();
        if here.is_some_and(|m| (m.dev(), m.ino()) == self.id) {
            return;
        }
        match Log::open(&self.path) {
            Ok(log) => *self = log,
            Err(e) if !self.stuck => {
                self.stuck = true;
                tracing::error!(path = %self.path.display(), error = %e,
                    "cannot open the log again after it moved; appending to the old file");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file's text once it holds `lines` lines.
    fn lines_of(path: &Path, lines: usize) -> String {
        for _ in 0..500 {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.lines().count() >= lines {
                return text;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{} never held {lines} lines", path.display());
    }

    #[test]
    fn a_log_moved_away_is_followed_by_a_new_one() {
        let dir = std::env::temp_dir().join(format!("llmgw-jsonl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (path, rotated) = (dir.join("usage.jsonl"), dir.join("usage.jsonl.1"));
        let log = Appender::open(&path).unwrap();
        log.append(1);
        assert_eq!(lines_of(&path, 1), "1\n");
        std::fs::rename(&path, &rotated).unwrap();
        log.append(2);
        log.append(3);
        assert_eq!(lines_of(&path, 2), "2\n3\n");
        std::fs::remove_file(&path).unwrap();
        log.append(4);
        assert_eq!(lines_of(&path, 1), "4\n");
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "1\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
