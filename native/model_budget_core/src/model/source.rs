//! A forward reader over a file of known size that tracks its byte offset,
//! so that every error can say where it was found, and that checks each
//! declared length against the bytes really left before reading or
//! allocating anything.

use std::io::{self, Read, Seek, SeekFrom};

use crate::error::{Error, Result};

/// Read buffer. Headers are read front to back in small pieces (a token
/// string is a few bytes), so a modest buffer turns them into few syscalls.
pub(crate) const BUFFER: usize = 64 * 1024;

pub(crate) struct Source<R> {
    inner: R,
    len: u64,
    buf: Vec<u8>,
    /// File offset of `buf[0]`; `inner` is positioned at `start + filled`.
    start: u64,
    filled: usize,
    pos: usize,
}

/// An `InvalidModel` error at `offset`.
pub(crate) fn invalid(offset: u64, reason: impl Into<String>) -> Error {
    Error::InvalidModel {
        offset,
        reason: reason.into(),
    }
}

/// The `File`-style error for an I/O failure.
pub(crate) fn io_error(err: &io::Error) -> Error {
    use io::ErrorKind as K;
    let code = match err.kind() {
        K::NotFound => "enoent",
        K::PermissionDenied => "eacces",
        K::IsADirectory => "eisdir",
        K::NotADirectory => "enotdir",
        K::InvalidFilename => "enametoolong",
        K::OutOfMemory => "enomem",
        K::Interrupted => "eintr",
        K::TooManyLinks => "emlink",
        K::StorageFull => "enospc",
        _ => "eio",
    };
    Error::Io {
        code,
        message: err.to_string(),
    }
}

impl<R: Read + Seek> Source<R> {
    /// Reads `inner` from its start; `len` is its real size in bytes.
    pub(crate) fn new(mut inner: R, len: u64) -> Result<Self> {
        inner.seek(SeekFrom::Start(0)).map_err(|e| io_error(&e))?;
        Ok(Source {
            inner,
            len,
            buf: vec![0; BUFFER.min(usize::try_from(len).unwrap_or(BUFFER))],
            start: 0,
            filled: 0,
            pos: 0,
        })
    }

    /// The file offset of the next byte.
    pub(crate) fn offset(&self) -> u64 {
        self.start + self.pos as u64
    }

    /// Bytes between the next one and the end of the file.
    pub(crate) fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.offset())
    }

    /// Fails unless `n` more bytes exist; `what` names them in the error.
    pub(crate) fn need(&self, n: u64, what: &str) -> Result<()> {
        if n > self.remaining() {
            return Err(invalid(
                self.offset(),
                format!(
                    "{what} needs {n} bytes but the file ends {} bytes later",
                    self.remaining()
                ),
            ));
        }
        Ok(())
    }

    /// Fills `dst` from the file; `what` names the field in errors.
    pub(crate) fn read_into(&mut self, dst: &mut [u8], what: &str) -> Result<()> {
        self.need(dst.len() as u64, what)?;
        let mut done = 0;
        while done < dst.len() {
            if self.pos == self.filled {
                self.refill(what)?;
            }
            let n = (self.filled - self.pos).min(dst.len() - done);
            dst[done..done + n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            done += n;
        }
        Ok(())
    }

    fn refill(&mut self, what: &str) -> Result<()> {
        self.start += self.filled as u64;
        self.pos = 0;
        self.filled = 0;
        let n = loop {
            match self.inner.read(&mut self.buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_error(&e)),
            }
        };
        if n == 0 {
            // The file shrank under us: its size said otherwise.
            return Err(invalid(self.start, format!("file ends inside {what}")));
        }
        self.filled = n;
        Ok(())
    }

    pub(crate) fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut bytes = [0; N];
        self.read_into(&mut bytes, what)?;
        Ok(bytes)
    }

    pub(crate) fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Reads `n` bytes into a new buffer, after checking they exist.
    pub(crate) fn take(&mut self, n: u64, what: &str) -> Result<Vec<u8>> {
        self.need(n, what)?;
        // `need` bounds n by the file's size, which fits in memory's
        // address space only if it fits usize.
        let n = usize::try_from(n)
            .map_err(|_| invalid(self.offset(), format!("{what} is too long")))?;
        let mut bytes = vec![0; n];
        self.read_into(&mut bytes, what)?;
        Ok(bytes)
    }

    /// Moves past `n` bytes without reading them.
    pub(crate) fn skip(&mut self, n: u64, what: &str) -> Result<()> {
        self.need(n, what)?;
        let in_buffer = (self.filled - self.pos) as u64;
        if n <= in_buffer {
            self.pos += n as usize;
            return Ok(());
        }
        let target = self.offset() + n;
        self.inner
            .seek(SeekFrom::Start(target))
            .map_err(|e| io_error(&e))?;
        self.start = target;
        self.filled = 0;
        self.pos = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn reads_across_buffer_refills_and_skips() {
        let data: Vec<u8> = (0..(3 * BUFFER as u32)).map(|i| i as u8).collect();
        let mut src = Source::new(Cursor::new(&data), data.len() as u64).unwrap();
        src.skip(BUFFER as u64 - 2, "gap").unwrap();
        let mut four = [0; 4];
        src.read_into(&mut four, "four").unwrap();
        assert_eq!(four, [254, 255, 0, 1]);
        src.skip(BUFFER as u64 + 10, "gap").unwrap();
        assert_eq!(src.offset(), 2 * BUFFER as u64 + 12);
        assert_eq!(src.u8("byte").unwrap(), 12);
        assert_eq!(src.remaining(), BUFFER as u64 - 13);
    }

    #[test]
    fn refuses_lengths_past_the_end_before_allocating() {
        let mut src = Source::new(Cursor::new(vec![1u8; 10]), 10).unwrap();
        src.skip(4, "head").unwrap();
        let err = src.take(u64::MAX, "a string").unwrap_err();
        assert_eq!(
            err,
            invalid(
                4,
                "a string needs 18446744073709551615 bytes but the file ends 6 bytes later"
            )
        );
        assert!(src.skip(7, "gap").is_err());
        assert_eq!(src.take(6, "rest").unwrap(), vec![1; 6]);
    }

    #[test]
    fn a_file_shorter_than_its_size_is_invalid_not_a_panic() {
        let mut src = Source::new(Cursor::new(vec![0u8; 3]), 8).unwrap();
        assert_eq!(
            src.u64("count").unwrap_err(),
            invalid(3, "file ends inside count")
        );
    }
}
