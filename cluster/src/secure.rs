//! Encrypted links: after the handshake, when both sides asked for it, every byte of the link
//! travels in Noise transport records (ChaCha20-Poly1305 under the link's fresh keys).
//!
//! ```text
//! record = len: u16 LE | ciphertext (len bytes: at most 65,519 bytes of frames + a 16-byte tag)
//! ```
//! The frames of the plain protocol are cut into records as they come (a frame may span
//! records, a record may hold many frames); each direction numbers its records from 0, and
//! the number is the AEAD nonce, so a record that is dropped, replayed, reordered or altered
//! fails to decrypt and closes the link. The reader ([`Opener`]) is an `AsyncRead` that yields
//! the plain frames, so the frame reader on top of it is the same as on a plain link.

use crate::wire::WireError;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

/// Size of a Noise AEAD tag.
const TAG: usize = 16;
/// Largest Noise message.
const RECORD_MAX: usize = 65535;
/// Most bytes of frames in one record.
const RECORD_PLAIN: usize = RECORD_MAX - TAG;

/// The keys of one encrypted link (both directions), from its handshake.
#[derive(Clone)]
pub struct LinkCipher(Arc<snow::StatelessTransportState>);

impl std::fmt::Debug for LinkCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkCipher(keys redacted)")
    }
}

impl LinkCipher {
    pub(crate) fn new(state: snow::StatelessTransportState) -> Self {
        LinkCipher(Arc::new(state))
    }

    /// The sending half: seals bytes into records.
    pub fn sealer(&self) -> Sealer {
        Sealer {
            state: self.0.clone(),
            nonce: 0,
        }
    }

    /// The receiving half over `inner`: an `AsyncRead` of the plain bytes.
    pub fn opener<R>(&self, inner: R) -> Opener<R> {
        Opener {
            inner,
            state: self.0.clone(),
            nonce: 0,
            record: vec![0u8; 2 + RECORD_MAX],
            have: 0,
            plain: vec![0u8; RECORD_MAX],
            plain_len: 0,
            pos: 0,
        }
    }
}

/// Seals the bytes a link writes into records.
pub struct Sealer {
    state: Arc<snow::StatelessTransportState>,
    nonce: u64,
}

impl Sealer {
    /// Appends the records of `plain` to `out`.
    ///
    /// # Errors
    /// [`WireError::Encode`] if the cipher refuses (its nonces are exhausted).
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        for chunk in plain.chunks(RECORD_PLAIN) {
            let start = out.len();
            out.resize(start + 2 + chunk.len() + TAG, 0);
            let n = self
                .state
                .write_message(self.nonce, chunk, &mut out[start + 2..])
                .map_err(|e| WireError::Encode(format!("cannot seal a record: {e}")))?;
            self.nonce += 1;
            // n ≤ RECORD_MAX, so it fits the u16 length.
            out[start..start + 2].copy_from_slice(&(n as u16).to_le_bytes());
            out.truncate(start + 2 + n);
        }
        Ok(())
    }
}

/// Reads records from `inner` and yields their plain bytes.
pub struct Opener<R> {
    inner: R,
    state: Arc<snow::StatelessTransportState>,
    nonce: u64,
    record: Vec<u8>,
    have: usize,
    plain: Vec<u8>,
    plain_len: usize,
    pos: usize,
}

fn bad_record(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

impl<R> Opener<R> {
    /// Bytes of the record being read that are needed before it is whole.
    fn needed(&self) -> io::Result<usize> {
        if self.have < 2 {
            return Ok(2);
        }
        let len = u16::from_le_bytes([self.record[0], self.record[1]]) as usize;
        if len < TAG {
            return Err(bad_record("an encrypted record shorter than its tag"));
        }
        Ok(2 + len)
    }

    fn open(&mut self, end: usize) -> io::Result<()> {
        let n = self
            .state
            .read_message(self.nonce, &self.record[2..end], &mut self.plain)
            .map_err(|_| bad_record("a record did not decrypt (altered, replayed or reordered)"))?;
        self.nonce += 1;
        self.plain_len = n;
        self.pos = 0;
        self.have = 0;
        Ok(())
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Opener<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.pos < this.plain_len {
                let n = buf.remaining().min(this.plain_len - this.pos);
                buf.put_slice(&this.plain[this.pos..this.pos + n]);
                this.pos += n;
                return Poll::Ready(Ok(()));
            }
            let need = this.needed()?;
            if this.have == need && need > 2 {
                this.open(need)?;
                continue;
            }
            let mut rb = ReadBuf::new(&mut this.record[this.have..need]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                return Poll::Ready(if this.have == 0 {
                    Ok(()) // end of stream between records
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                });
            }
            this.have += n;
        }
    }
}
