//! Per-thread decoding state, reused across chunks: no allocation or
//! context set-up per chunk.

/// Where a decoded byte plane lives: `(offset, length)` in the stored bytes
/// the chunk was decoded from (planes stored raw, read in place: the entry's
/// map, or the slab read from its file, [`crate::slab`]) or in the decoding
/// thread's [`Scratch`] buffer, or `length` copies of one byte (a constant
/// plane, in [`Scratch::constant`]).
#[derive(Debug, Clone, Copy)]
pub(crate) enum PlaneAt {
    Stored(usize, usize),
    Buf(usize, usize),
    Const(u8, usize),
}

/// Decompressors and buffers of one thread.
#[derive(Default)]
pub(crate) struct Scratch {
    zstd: Option<zstd::bulk::Decompressor<'static>>,
    /// Decompressed planes; the first `used` bytes are in use. It only ever
    /// grows and is never cleared, so a chunk decompresses into memory
    /// without filling it first (the decompressors overwrite all of it).
    pub(crate) buf: Vec<u8>,
    used: usize,
    /// Per byte value, that byte repeated: constant planes point here
    /// instead of being filled for every chunk.
    constants: Vec<Vec<u8>>,
    /// A packed plane's decompressed indices, on their way to `buf`.
    tmp: Vec<u8>,
}

/// Scratch bytes a thread keeps after a plane-by-plane decode: a box read
/// needs at most a chunk row (about 0.5 MiB for a 512-wide volume of the
/// default chunks); a whole slab of a large volume can need tens of MiB once
/// (16 MiB for a 512² volume of 32³ chunks, which are still read).
pub(crate) const SCRATCH_KEEP: usize = 4 << 20;

thread_local! {
    pub(crate) static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

impl Scratch {
    /// Starts over (the bytes stay, to be overwritten).
    pub(crate) fn reset(&mut self) {
        self.used = 0;
    }

    /// Frees the buffer beyond `keep` bytes.
    pub(crate) fn trim(&mut self, keep: usize) {
        trim_bytes(&mut self.buf, keep);
        self.used = self.used.min(keep);
    }

    /// Reserves the next `n` bytes of `buf` (zeroed only when `buf` grows;
    /// otherwise stale) and returns their offset.
    pub(crate) fn take(&mut self, n: usize) -> usize {
        let at = self.used;
        if self.buf.len() < at + n {
            self.buf.resize(at + n, 0);
        }
        self.used = at + n;
        at
    }

    /// [`Scratch::take`], with those bytes and the buffer for a packed
    /// plane's indices.
    pub(crate) fn take_with_tmp(&mut self, n: usize) -> (usize, &mut [u8], &mut Vec<u8>) {
        let at = self.take(n);
        (at, &mut self.buf[at..at + n], &mut self.tmp)
    }

    /// The thread's zstd decompressor (created on first use) and the buffer.
    pub(crate) fn zstd_and_buf(
        &mut self,
    ) -> std::io::Result<(&mut zstd::bulk::Decompressor<'static>, &mut Vec<u8>)> {
        if self.zstd.is_none() {
            self.zstd = Some(zstd::bulk::Decompressor::new()?);
        }
        let dec = self.zstd.as_mut().expect("created above");
        Ok((dec, &mut self.buf))
    }

    /// Makes `byte` repeated `n` times available to [`Scratch::plane`].
    pub(crate) fn constant(&mut self, byte: u8, n: usize) {
        if self.constants.is_empty() {
            self.constants = vec![Vec::new(); 256];
        }
        let run = &mut self.constants[usize::from(byte)];
        if run.len() < n {
            run.resize(n, byte);
        }
    }

    /// The bytes of a decoded plane (`stored`: the bytes its chunk was
    /// decoded from, for planes read in place).
    pub(crate) fn plane<'a>(&'a self, at: PlaneAt, stored: &'a [u8]) -> &'a [u8] {
        match at {
            PlaneAt::Stored(from, len) => &stored[from..from + len],
            PlaneAt::Buf(from, len) => &self.buf[from..from + len],
            PlaneAt::Const(byte, len) => &self.constants[usize::from(byte)][..len],
        }
    }
}

/// Frees `bytes` beyond `keep`.
pub(crate) fn trim_bytes(bytes: &mut Vec<u8>, keep: usize) {
    if bytes.len() > keep {
        bytes.truncate(keep);
        bytes.shrink_to_fit();
    }
}
