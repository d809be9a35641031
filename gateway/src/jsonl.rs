//! Appends records to a JSON-lines file from a thread of its own, so the
//! request path never waits on the disk (the usage log, the decision log).

use std::io::Write;
use std::path::Path;
use std::sync::mpsc;

use serde::Serialize;

pub struct Appender<T> {
    tx: mpsc::Sender<T>,
}

impl<T: Serialize + Send + 'static> Appender<T> {
    /// Opens `path` for appending (created if missing); its thread lives
    /// as long as the appender.
    pub fn open(path: &Path) -> std::io::Result<Appender<T>> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let (tx, rx) = mpsc::channel::<T>();
        let name = path.display().to_string();
        std::thread::Builder::new()
            .name("jsonl-append".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::new(file);
                while let Ok(first) = rx.recv() {
                    // Whatever queued meanwhile goes in the same write.
                    for record in std::iter::once(first).chain(rx.try_iter()) {
                        let mut line = serde_json::to_vec(&record).expect("a record serializes");
                        line.push(b'\n');
                        if let Err(e) = out.write_all(&line) {
                            tracing::error!(path = name, error = %e, "cannot append to the log");
                        }
                    }
                    if let Err(e) = out.flush() {
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
